"""PCA baseline, 2D and 3D: closed form (:mod:`models.nets.closed_form`); per sample, higher = more
anomalous, with D = C·patch^dims voxels per sample:

- ``pca2d``/``pca3d`` (scikit-learn's ``PCA`` on the flattened patches):
  ``pca_recon`` = ‖x − x̂‖² / D, the mean squared reconstruction error, with
  x̂ = μ + (x − μ)ᵀWᵀW the projection onto the first k principal components W (this is
  ``PCA.inverse_transform(PCA.transform(x))``, also when ``whiten`` is set);
  ``pca_latent`` = ‖PCA.transform(x)‖², the squared distance from the training mean inside the
  principal subspace (with ``whiten: true`` each coordinate is divided by its component's standard
  deviation, which makes it Hotelling's T² in the subspace). Residual map: |x − x̂|.
"""

from __future__ import annotations

import torch

from models.detector import ScoreOutput
from models.detectors.pca.params import PCAParams
from models.nets.closed_form import ClosedFormDetector, fit_pca
from models.registry import DETECTORS, register_2d_3d


@register_2d_3d("pca")
class PCADetector(ClosedFormDetector):
    """PCA reconstruction error (scikit-learn PCA on flattened patches)

    Buffers: ``mean`` (D,), ``components`` (n_components, D) with orthonormal rows,
    ``explained_variance`` (n_components,) and ``n_fitted`` (scalar, the number of components
    actually fitted). The centred training data have rank ≤ N − 1, so with N training patches
    only k = min(n_components, N − 1, D) components are fitted (more would be arbitrary
    directions of zero variance); the remaining rows of ``components`` are zero, which leaves
    the reconstruction and ``pca_latent`` unchanged. With N = 1 no component is fitted and the
    reconstruction is the training mean. The SVD solver is scikit-learn's ``auto`` choice
    (randomised for large D, exact otherwise) with ``random_state=0``, so fits are reproducible.
    """


    def __init__(self, params: PCAParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        d = in_channels * patch_size**self.spatial_dims
        self.n_features = d
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("components", torch.zeros(params.n_components, d))
        self.register_buffer("explained_variance", torch.zeros(params.n_components))
        self.register_buffer("n_fitted", torch.zeros((), dtype=torch.long))

    def fit_arrays(self, train_x: torch.Tensor) -> dict[str, float]:
        x = self._check_input(train_x)
        n = len(x)
        if n == 0:
            raise ValueError(f"{self.registry_name}: cannot fit PCA on 0 training patches")
        mean, comps, var, k, ratio = fit_pca(x.detach().reshape(n, -1).cpu().float().numpy(), self.params.n_components)
        with torch.no_grad():
            self.mean.copy_(torch.from_numpy(mean))
            self.components.copy_(torch.from_numpy(comps))
            self.explained_variance.copy_(torch.from_numpy(var))
            self.n_fitted.fill_(k)
            loss = float(self.validation_loss(x).mean())
        return {"loss": loss, "components": float(k), "explained_variance_ratio": ratio}

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(transform(x), reconstruction)``: latent coordinates (B, n_components), whitened if
        ``params.whiten`` (zero for unfitted components), and x̂ with the shape of ``x``."""
        x = self._check_input(x).to(self.mean.dtype)
        xc = x.reshape(len(x), -1) - self.mean
        z = xc @ self.components.T
        recon = (z @ self.components + self.mean).view_as(x)
        if self.params.whiten:  # scikit-learn's rule: clip σ at machine epsilon
            scale = self.explained_variance.sqrt().clamp_min(torch.finfo(z.dtype).eps)
            z = z / scale
        return z, recon

    def validation_loss(self, x):
        x = self._check_input(x).to(self.mean.dtype)
        _, recon = self.project(x)
        return (x - recon).pow(2).flatten(1).mean(1)

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = self._check_input(x).to(self.mean.dtype)
        z, recon = self.project(x)
        return ScoreOutput.of({"pca_recon": (x - recon).pow(2).flatten(1).mean(1), "pca_latent": z.pow(2).sum(1)}, x, recon)


PCA2D, PCA3D = DETECTORS["pca2d"], DETECTORS["pca3d"]
