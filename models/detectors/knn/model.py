"""k-NN baseline, 2D and 3D, closed form (:mod:`models.nets.closed_form`): a baseline a learned detector has to beat.

- ``knn2d``/``knn3d``: k-NN distance in PCA space. scikit-learn ``PCA`` (``n_components``) on the
  flattened normal training patches, then ``knn`` = mean Euclidean distance of a patch's PCA
  coordinates to its ``k`` nearest training patches (:class:`models.nets.feature_density.FeatureDensity`).
  Also ``knn_maha``: the LedoitWolf Mahalanobis distance in the same coordinates. Residual map:
  |x − PCA reconstruction|.
"""

from __future__ import annotations

import numpy as np
import torch

from models.detector import ScoreOutput
from models.detectors.knn.params import KNNParams
from models.nets.closed_form import ClosedFormDetector, fit_pca
from models.nets.feature_density import FeatureDensity
from models.registry import DETECTORS, register_2d_3d


@register_2d_3d("knn")
class KNNDetector(ClosedFormDetector):
    """k-NN distance on PCA coordinates of normal training patches"""


    def __init__(self, params: KNNParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        d = in_channels * patch_size**self.spatial_dims
        self.n_features = d
        self.register_buffer("pca_mean", torch.zeros(d))
        self.register_buffer("components", torch.zeros(params.n_components, d))
        self.register_buffer("scale", torch.ones(params.n_components))
        self.density = FeatureDensity(params.k)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(PCA coordinates (B, n_components), reconstruction)``."""
        xc = x.reshape(len(x), -1).to(self.pca_mean.dtype) - self.pca_mean
        z = xc @ self.components.T
        recon = (z @ self.components + self.pca_mean).view_as(x)
        return z / self.scale, recon

    def fit_arrays(self, train_x):
        x = self._check_input(train_x)
        n = len(x)
        if n == 0:
            raise ValueError(f"{self.registry_name}: cannot fit on 0 training patches")
        mean, comps, var, k, ratio = fit_pca(x.detach().reshape(n, -1).cpu().float().numpy(), self.params.n_components)
        scale = np.ones(self.params.n_components, np.float32)
        if self.params.whiten and k > 0:
            scale[:k] = np.sqrt(np.maximum(var[:k], np.finfo(np.float32).eps))
        with torch.no_grad():
            self.pca_mean.copy_(torch.from_numpy(mean))
            self.components.copy_(torch.from_numpy(comps))
            self.scale.copy_(torch.from_numpy(scale))
            z, _ = self.project(x.float())
            terms = self.density.fit(z)
        return {"loss": float(self.density.knn(z).mean()), "components": float(k), "explained_variance_ratio": ratio, **terms}

    def validation_loss(self, x):
        """k-NN distance of normal validation patches to the training set (lower = closer)."""
        z, _ = self.project(self._check_input(x).float())
        return self.density.knn(z)

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = self._check_input(x).float()
        z, recon = self.project(x)
        return ScoreOutput.of({"knn": self.density.knn(z), "knn_maha": self.density.maha(z)}, x, recon)


KNN2D, KNN3D = DETECTORS["knn2d"], DETECTORS["knn3d"]
