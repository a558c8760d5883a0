"""Mahalanobis baseline on raw pixels, 2D and 3D, closed form (:mod:`models.nets.closed_form`).

Each patch (C, *spatial) is average-pooled to ``size``^dims pixels per channel (``size: 0`` or a
size ≥ the patch keeps the full resolution) and flattened to D = C·size^dims values. The mean μ and
covariance Σ of the normal training patches are estimated with scikit-learn's ``LedoitWolf``
(shrinkage towards a scaled identity, so Σ is well conditioned even with fewer patches than
pixels), plus ``ridge``·I. Score (higher = more anomalous): ``mahalanobis`` = (f − μ)ᵀ Σ⁻¹ (f − μ),
the squared Mahalanobis distance, computed in float64. Residual map: |x − mean training patch|.
Buffers (``mean``, ``precision``, ``mean_image``) have shapes fixed by the parameters and the input
shape, so a freshly built model loads a checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf

from models.detector import ScoreOutput
from models.detectors.mahalanobis.params import MahalanobisParams
from models.nets.closed_form import ClosedFormDetector
from models.registry import DETECTORS, register_2d_3d


@register_2d_3d("mahalanobis")
class MahalanobisDetector(ClosedFormDetector):
    """Squared Mahalanobis distance of the (pooled) pixels to the normal training patches"""

    def __init__(self, params: MahalanobisParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        self.side = patch_size if params.size <= 0 else min(params.size, patch_size)
        n = in_channels * self.side**self.spatial_dims
        self.register_buffer("mean", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("precision", torch.eye(n, dtype=torch.float64))
        self.register_buffer("mean_image", torch.zeros(in_channels, *([patch_size] * self.spatial_dims)))

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) float64: the patch average-pooled to ``side``^dims per channel, flattened."""
        if self.side < self.patch_size:
            pool = F.adaptive_avg_pool3d if self.spatial_dims == 3 else F.adaptive_avg_pool2d
            x = pool(x, self.side)
        return x.reshape(len(x), -1).double()

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) squared Mahalanobis distances."""
        d = self.pixels(x) - self.mean
        return ((d @ self.precision) * d).sum(1)

    def fit_arrays(self, train_x: torch.Tensor) -> dict[str, float]:
        x = self._check_input(train_x).detach().to(self.mean_image.device, self.mean_image.dtype)
        if len(x) == 0:
            raise ValueError(f"{self.registry_name}: cannot fit on 0 training patches")
        with torch.no_grad():
            f = self.pixels(x).cpu().numpy()
            lw = LedoitWolf(assume_centered=False).fit(f) if len(f) > 1 else None
            cov = lw.covariance_ if lw is not None else np.zeros((f.shape[1],) * 2)
            cov = cov + self.params.ridge * np.eye(f.shape[1])
            self.mean.copy_(torch.from_numpy(f.mean(0)))
            self.precision.copy_(torch.from_numpy(np.linalg.inv(cov)))
            self.mean_image.copy_(x.double().mean(0).to(self.mean_image.dtype))
            loss = float(self.validation_loss(x).mean())
        return {"loss": loss, "n_features": float(f.shape[1]), "shrinkage": float(lw.shrinkage_) if lw is not None else 1.0}

    def validation_loss(self, x):
        """Squared Mahalanobis distance divided by D (≈ 1 for normal data from the training distribution)."""
        x = self._check_input(x).to(self.mean_image.dtype)
        return (self.distance(x) / self.mean.numel()).to(x.dtype)

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = self._check_input(x).to(self.mean_image.dtype)
        return ScoreOutput.of({"mahalanobis": self.distance(x).to(x.dtype)}, x, self.mean_image.expand_as(x))


Mahalanobis2D, Mahalanobis3D = DETECTORS["mahalanobis2d"], DETECTORS["mahalanobis3d"]
