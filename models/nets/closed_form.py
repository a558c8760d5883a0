"""The base of the closed-form baselines (``sgd = False``: pca, intensity, size, knn in ``models/detectors/``) and their PCA fit.

They are fitted in one pass over all normal training centre patches (the train stage calls
:meth:`~models.detector.Detector.fit_arrays` once, then ``validation_loss`` on the validation
patches) and keep their fitted statistics in registered buffers whose shapes depend only on
``(params, in_channels, patch_size)``, so a freshly built model loads a checkpoint's state_dict.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA as SkPCA

from models.detector import Detector
from models.nets.blocks import plain


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
