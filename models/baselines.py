"""Closed-form baseline detectors: PCA reconstruction error and an intensity statistic, 2D and 3D.

Both are fitted in one pass over all normal training centre patches (``sgd = False``; the train
stage calls :meth:`fit_arrays` once, then :meth:`validation_loss` on the validation patches) and
keep their fitted statistics in registered buffers whose shapes depend only on
``(params, in_channels, patch_size)``, so a freshly built model loads a checkpoint's state_dict.
Scores are per sample, higher = more anomalous; with D = C·patch^dims voxels per sample:

- ``pca2d``/``pca3d`` (scikit-learn's ``PCA`` on the flattened patches):
  ``pca_recon`` = ‖x − x̂‖² / D, the mean squared reconstruction error, with
  x̂ = μ + (x − μ)ᵀWᵀW the projection onto the first k principal components W (this is
  ``PCA.inverse_transform(PCA.transform(x))``, also when ``whiten`` is set);
  ``pca_latent`` = ‖PCA.transform(x)‖², the squared distance from the training mean inside the
  principal subspace (with ``whiten: true`` each coordinate is divided by its component's standard
  deviation, which makes it Hotelling's T² in the subspace). Residual map: |x − x̂|.
- ``intensity2d``/``intensity3d``: a scalar statistic s(x) of all voxels (all channels) of the
  patch: ``mean``, ``std``, ``max``, ``high_fraction`` (fraction of voxels > ``threshold``) or
  ``complexity`` (the PNG size in bits of the 8-bit patch, :mod:`models.complexity`).
  ``intensity_raw`` = s(x); ``intensity`` = its z-score against the normal training set,
  z = (s(x) − mean_train) / std_train, reported as |z| (``distance: two_sided``), z (``upper``)
  or −z (``lower``). Residual map: |x − mean training patch|.

Orientation of ``intensity_raw``: it is the statistic itself, so it is "higher = more anomalous"
only where anomalies are brighter/denser than normal tissue, e.g. solid nodules on lung
background in window-normalised CT (lung parenchyma ≈ 0, soft tissue ≈ 0.6 in [−1000, 400] HU):
there a raw mean intensity (or ``high_fraction``) ranks nodules above lung. The two-sided z-score
``intensity`` makes no assumption about the direction.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.decomposition import PCA as SkPCA

from models.catalog import STATISTICS, IntensityParams, PCAParams
from models.complexity import png_bits
from models.nets import plain
from models.registry import MODELS, Detector, ScoreOutput, register_2d_3d


def fit_pca(flat: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
    """PCA of the rows of ``flat`` (N, D), zero-padded to ``n_components``.

    Returns ``(mean (D,), components (n_components, D), explained variance (n_components,), k,
    explained variance ratio)``. The centred data have rank ≤ N − 1, so only k = min(n_components,
    N − 1, D) components are fitted; the other rows are zero. scikit-learn's ``auto`` solver with
    ``random_state=0``, so fits are reproducible.
    """
    n, d = flat.shape
    k = min(n_components, n - 1, d)
    mean = flat.mean(0)
    comps = np.zeros((n_components, d), np.float32)
    var = np.zeros(n_components)  # float64, as scikit-learn gives it
    ratio = 0.0
    if k > 0:
        pca = SkPCA(n_components=k, svd_solver="auto", random_state=0).fit(flat)
        mean, comps[:k], var[:k] = pca.mean_, pca.components_, pca.explained_variance_
        ratio = float(pca.explained_variance_ratio_.sum())
    return np.asarray(mean, np.float32), comps, var, k, ratio


class ClosedFormDetector(Detector):
    """Base for detectors fitted in closed form by :meth:`fit_arrays` (no optimiser, no SGD)."""

    sgd = False

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return []  # no parameters: torch.optim would reject an empty parameter list

    def training_step(self, x, optimizers, max_grad_norm):
        raise RuntimeError(f"{self.registry_name or type(self).__name__} is fitted in closed form (sgd = False): "
                           "call fit_arrays() on all training patches instead of training_step()")

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        x = plain(x)
        want = (self.in_channels, *([self.patch_size] * self.spatial_dims))
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"{self.registry_name}: expected input (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        return x


# --------------------------------------------------------------------------------------------
# PCA reconstruction error
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Intensity statistic
# --------------------------------------------------------------------------------------------



@register_2d_3d("intensity")
class IntensityDetector(ClosedFormDetector):
    """Intensity statistic z-scored against the normal training set

    Buffers: ``stat_mean`` and ``stat_std`` (scalars; sample standard deviation over the training
    patches, floored at ``min_std``) and ``mean_image`` (C, *spatial), the voxel-wise mean
    training patch used for the residual map.
    """


    def __init__(self, params: IntensityParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        if params.statistic not in STATISTICS:
            raise ValueError(f"model.statistic: {params.statistic!r} is not one of {', '.join(STATISTICS)}")
        self.register_buffer("stat_mean", torch.zeros(()))
        self.register_buffer("stat_std", torch.ones(()))
        self.register_buffer("mean_image", torch.zeros(in_channels, *([patch_size] * self.spatial_dims)))

    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        """The raw statistic per sample, over all channels and voxels: (B,)."""
        flat = x.reshape(len(x), -1)
        stat = self.params.statistic
        if stat == "mean":
            return flat.mean(1)
        if stat == "std":
            return flat.std(1, correction=0)
        if stat == "max":
            return flat.amax(1)
        if stat == "complexity":
            return png_bits(x)
        return (flat > self.params.threshold).to(flat.dtype).mean(1)

    def zscore(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(distance score, raw statistic)`` per sample."""
        raw = self.statistic(x)
        z = (raw - self.stat_mean) / self.stat_std
        dist = {"two_sided": z.abs(), "upper": z, "lower": -z}[self.params.distance]
        return dist, raw

    def fit_arrays(self, train_x: torch.Tensor) -> dict[str, float]:
        x = self._check_input(train_x).detach().to(self.mean_image.device, self.mean_image.dtype)
        if len(x) == 0:
            raise ValueError(f"{self.registry_name}: cannot fit on 0 training patches")
        with torch.no_grad():
            s = self.statistic(x).double()
            std = float(s.std(correction=1)) if len(s) > 1 else 0.0
            self.stat_mean.fill_(float(s.mean()))
            self.stat_std.fill_(max(std, self.params.min_std) if math.isfinite(std) else self.params.min_std)
            self.mean_image.copy_(x.double().mean(0).to(self.mean_image.dtype))
            loss = float(self.validation_loss(x).mean())
        return {"loss": loss, "stat_mean": float(self.stat_mean), "stat_std": float(self.stat_std)}

    def validation_loss(self, x):
        """Squared z-score z² of the statistic (≈ 1 on average for normal data from the training
        distribution; independent of ``distance``)."""
        x = self._check_input(x).to(self.mean_image.dtype)
        return ((self.statistic(x) - self.stat_mean) / self.stat_std).pow(2)

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = self._check_input(x).to(self.mean_image.dtype)
        dist, raw = self.zscore(x)
        return ScoreOutput.of({"intensity": dist, "intensity_raw": raw}, x, self.mean_image.expand_as(x))


PCA2D, PCA3D = MODELS["pca2d"], MODELS["pca3d"]
Intensity2D, Intensity3D = MODELS["intensity2d"], MODELS["intensity3d"]
