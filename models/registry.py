"""Model registry and the detector interface every registered model implements.

A detector is a ``torch.nn.Module`` with a ``Params`` dataclass (validated by the config schema)
and four methods used by the generic train/score stages. Adding a model is one module that
subclasses :class:`Detector` and decorates it with ``@register("name")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

MODELS: dict[str, type["Detector"]] = {}


def register(name: str):
    """Class decorator: make a detector available as ``model: {name: <name>}`` in configs."""

    def deco(cls: type[Detector]) -> type[Detector]:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = cls
        cls.registry_name = name
        return cls

    return deco


@dataclass
class ScoreOutput:
    """Per-sample score components (higher = more anomalous) and voxel-wise residual maps."""

    scores: dict[str, torch.Tensor]  # name → (B,)
    residual: torch.Tensor  # (B, C, *spatial), |x − reconstruction|


class Detector(nn.Module):
    """Interface of a trainable anomaly detector over (B, C, *spatial) inputs in model range."""

    Params: ClassVar[type]
    registry_name: ClassVar[str] = ""
    score_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params, in_channels: int, patch_size: int) -> None:
        super().__init__()
        self.params = params
        self.in_channels = in_channels
        self.patch_size = patch_size

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=lr)]

    def training_step(self, x: torch.Tensor, optimizers: list[torch.optim.Optimizer], max_grad_norm: float) -> dict[str, float]:
        """One optimisation step on batch ``x``; returns the loss terms as floats."""
        raise NotImplementedError

    def validation_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample loss on normal validation data (lower = better), shape (B,)."""
        raise NotImplementedError

    def score(self, x: torch.Tensor, mc_samples: int, generator: torch.Generator) -> ScoreOutput:
        raise NotImplementedError


def build(name: str, params, in_channels: int, patch_size: int) -> Detector:
    return MODELS[name](params, in_channels, patch_size)
