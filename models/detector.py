"""The detector interface every registered model implements: :class:`Detector`, :class:`ScoreOutput`, :func:`sgd_step`.

A detector is a ``torch.nn.Module`` with a ``Params`` dataclass (declared in its family's
torch-free ``params.py``, validated by the config schema) and the methods the generic train and
score stages call. A family's ``model.py`` subclasses :class:`Detector` and decorates it with
``@register_2d_3d("family")`` (:mod:`models.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn


@dataclass
class ScoreOutput:
    """Per-sample score components (higher = more anomalous), voxel-wise residual maps and the
    reconstruction they come from (shown next to the image in 2D overlays)."""

    scores: dict[str, torch.Tensor]  # name → (B,)
    residual: torch.Tensor  # (B, C, *spatial), |x − reconstruction|
    reconstruction: torch.Tensor | None = None  # (B, C, *spatial), in model range

    @classmethod
    def of(cls, scores: dict[str, torch.Tensor], x: torch.Tensor, reconstruction: torch.Tensor) -> "ScoreOutput":
        """Scores plus the residual |x − reconstruction| and the reconstruction itself."""
        return cls(scores=scores, residual=(x - reconstruction).abs(), reconstruction=reconstruction)


class Detector(nn.Module):
    """Interface of a trainable anomaly detector over (B, C, *spatial) inputs in model range.

    Models trained by minibatch SGD implement :meth:`loss` (one loss, one optimiser: the default
    :meth:`training_step` is :func:`sgd_step` on it) or their own :meth:`training_step` (the train
    stage calls :meth:`on_epoch_start` then one step per batch). Closed-form models (PCA, intensity statistics)
    set ``sgd = False`` and implement :meth:`fit_arrays` instead. :meth:`score` runs with autograd
    enabled so that latent searches can use gradients; models that need no gradients wrap their
    scoring in ``torch.inference_mode()`` themselves.
    """

    Params: ClassVar[type]
    registry_name: ClassVar[str] = ""
    score_names: ClassVar[tuple[str, ...]] = ()
    spatial_dims: ClassVar[int] = 3
    sgd: ClassVar[bool] = True

    def __init__(self, params, in_channels: int, patch_size: int) -> None:
        super().__init__()
        self.params = params
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.train_precision = "fp32"  # of the training forward pass (train.precision; set by the train stage)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Hook for multi-phase training (e.g. f-AnoGAN trains its encoder after the GAN)."""

    def selection_active(self) -> bool:
        """Whether the current epoch's validation loss counts for model selection and early
        stopping (False e.g. during f-AnoGAN's GAN phase, before its encoder is trained)."""
        return True

    def fit_arrays(self, train_x: torch.Tensor) -> dict[str, float]:
        """Closed-form fit on all centre patches at once (only for ``sgd = False`` models).

        Args:
            train_x: the normal training centre patches (N, C, *spatial), in model range.

        Returns:
            summary terms of the fit (logged as the training curve's only row).
        """
        raise NotImplementedError

    def fit_after_training(self, train_x: torch.Tensor) -> dict[str, float]:
        """Fit post-hoc statistics on the normal training centre patches with the selected weights
        (e.g. the density of the VAE's codes); called once by the train stage. Returns summary terms.

        ``train_x`` is (N, C, *spatial): a tensor, or from the train stage a stand-in that reads the
        patches when sliced, so an implementation uses only ``len(train_x)`` and ``train_x[i:j]``."""
        return {}

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=lr)]

    def training_step(self, x: torch.Tensor, optimizers: list[torch.optim.Optimizer], max_grad_norm: float) -> dict[str, float]:
        """One optimisation step on a batch; by default :func:`sgd_step` on :meth:`loss` with the one optimiser.

        Models with several networks or optimisers (the GANs) override it.

        Args:
            x: a batch of augmented training patches (B, C, *spatial), in model range.
            optimizers: those of :meth:`configure_optimizers`, in the same order.
            max_grad_norm: gradient norm clipping for every network.

        Returns:
            the loss terms as floats; ``loss`` must be among them (a non-finite one stops training).
        """
        (opt,) = optimizers
        return sgd_step(self, x, opt, max_grad_norm, self.train_precision)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar training loss of batch ``x`` and its logged terms, for models trained with one
        optimiser; such a model's ``training_step`` is :func:`sgd_step`, and it can train with DDP."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss(x)  # DistributedDataParallel runs forward(), so the loss goes through it

    @classmethod
    def single_loss(cls) -> bool:
        """Whether the model trains on one :meth:`loss` with one optimiser (the models DDP supports)."""
        return cls.loss is not Detector.loss

    def validation_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample loss on normal validation data, used for early stopping and model selection.

        Args:
            x: normal validation centre patches (B, C, *spatial).

        Returns:
            (B,) losses, lower = better.
        """
        raise NotImplementedError

    def score(self, x: torch.Tensor, mc_samples: int, generator: torch.Generator) -> ScoreOutput:
        """Anomaly scores of a batch (higher = more anomalous).

        Args:
            x: centre patches (B, C, *spatial), in model range.
            mc_samples: Monte-Carlo samples for stochastic scores (the VAE's K).
            generator: the source of all scoring noise, seeded per batch by the caller; models
                draw noise shared by the whole batch, so a sample's score does not depend on its batch.

        Returns:
            the :class:`ScoreOutput`: one (B,) tensor per name of ``score_names``, and the residual map.
        """
        raise NotImplementedError

    def generator(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """z → image in model range (the GAN diagnostics' sample grids and latent search); None without a generator."""
        return None

    def encoder(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """x → code, raw as the model's scores see it (the GAN diagnostics' reconstructions); None without an encoder."""
        return None

    def latent_search(self) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None:
        """``(x, generator, trace=None) → (best code per image, loss terms)``: the model's search for the codes
        that reproduce ``x`` (AnoGAN; the GAN diagnostics plot its loss per step); None without one."""
        return None


def sgd_step(module: nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer, max_grad_norm: float,
             precision: str = "fp32") -> dict[str, float]:
    """One step on ``module(x) → (loss, terms)``: backward, clip the gradient norm, step.

    ``module`` is the detector or its DistributedDataParallel wrapper; with DDP the gradients are
    averaged over ranks during ``backward``, so clipping sees the global-batch gradient.
    ``precision`` ``bf16``: the forward pass and loss under ``torch.autocast`` with bfloat16 (weights,
    gradients and the optimiser stay float32; ~1.5× faster 3D convolutions on CPUs with AVX512-BF16).
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, terms = module(x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    optimizer.step()
    return {"loss": loss.item(), **{k: float(v.detach()) for k, v in terms.items()}}

