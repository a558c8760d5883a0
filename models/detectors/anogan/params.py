"""Hyper-parameters of the ``anogan`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.params import Family, WGANParams


@dataclass
class AnoGANParams(WGANParams):
    """AnoGAN hyper-parameters: the WGAN-GP's, and the latent search."""

    search_steps: int = 100
    search_lambda: float = 0.5  # weight of the feature term
    search_optimizer: Literal["adam", "sgd"] = "adam"
    search_lr: float = 0.05
    restarts: int = 1
    search_normalise: bool = False  # divide each term of L(z) by its typical size on the normal training images (fitted after training)
    search_project: bool = True  # keep z in the prior's support after every step (uniform: clamp to [-1, 1]; normal: cap ‖z‖ at the 99.9 % radius)

    @classmethod
    def tiny(cls) -> "AnoGANParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls(latent_dim=6, channels=[4, 8], strides=[2, 2], search_steps=4, restarts=2)

    def check(self, cfg) -> list[str]:
        errs = super().check(cfg)
        if self.search_steps < 0 or self.restarts < 1:
            errs.append("model.search_steps / model.restarts: need search_steps ≥ 0 and restarts ≥ 1")
        if self.search_lr <= 0:
            errs.append("model.search_lr: must be > 0")
        if not 0.0 <= self.search_lambda <= 1.0:
            errs.append("model.search_lambda: must be in [0, 1]")
        return errs


FAMILY = Family("anogan", AnoGANParams, ("anogan", "residual", "feature"), gan=True)
