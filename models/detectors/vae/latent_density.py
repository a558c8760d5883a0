"""Density of an encoder's codes: a Gaussian mixture fitted to the training codes (the aggregate posterior).

Why: a generative model's likelihood is dominated by how much structure an image has (few-ink
digits and smooth images look "likely" whatever their class; METHODS.md), so on MNIST 0-8 vs 9 the
VAE's ELBO is near chance. Where the encoder has learned the normal classes, an anomaly's code
falls between or outside the clusters of normal codes. ``latent`` = −log p_GMM(μ(x)) (nats) scores
that, with p_GMM fitted by scikit-learn's ``GaussianMixture`` (full covariances) on the codes of
the normal training patches after training. The number of components is chosen by BIC on those
training codes among ``candidates``: no validation or test data is involved.

The fitted parameters live in buffers of fixed shape (``max(candidates)`` components, unused ones
with zero weight), so a checkpoint loads into a freshly built model; evaluation is plain torch.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch import nn


class LatentGMM(nn.Module):
    """Gaussian mixture over codes of size ``dim`` with at most ``max_components`` components."""

    def __init__(self, dim: int, max_components: int) -> None:
        super().__init__()
        self.register_buffer("log_weights", torch.full((max_components,), -math.inf))
        self.register_buffer("means", torch.zeros(max_components, dim))
        self.register_buffer("prec_chol", torch.eye(dim).repeat(max_components, 1, 1))  # Cholesky factors of the precisions
        self.register_buffer("n_components", torch.zeros((), dtype=torch.long))  # 0 = not fitted

    @property
    def fitted(self) -> bool:
        return int(self.n_components) > 0

    def fit(self, codes: np.ndarray, candidates: Sequence[int], seed: int = 0) -> dict[str, float]:
        """Fit on ``codes`` (N, dim); the component count minimises BIC. Returns what was chosen."""
        codes = np.asarray(codes, dtype=np.float64)
        codes = codes[np.isfinite(codes).all(1)]  # a code with NaN carries no density information
        best, best_bic = None, math.inf
        for k in sorted(set(int(c) for c in candidates if 1 <= c <= min(len(codes), len(self.means)))):
            gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, n_init=1, random_state=seed).fit(codes)
            bic = gmm.bic(codes)
            if bic < best_bic:
                best, best_bic = gmm, bic
        if best is None:
            return {"latent_components": 0.0}
        k = best.n_components
        self.log_weights.fill_(-math.inf)
        self.log_weights[:k] = torch.as_tensor(np.log(best.weights_), dtype=torch.float32)
        self.means[:k] = torch.as_tensor(best.means_, dtype=torch.float32)
        self.prec_chol[:k] = torch.as_tensor(best.precisions_cholesky_, dtype=torch.float32)
        self.n_components.fill_(k)
        return {"latent_components": float(k), "latent_bic": float(best_bic), "latent_train_nll": float(-best.score(codes))}

    def nll(self, codes: torch.Tensor) -> torch.Tensor:
        """−log p(code) per row (nats); NaN when the mixture was never fitted."""
        if not self.fitted:
            return torch.full((codes.shape[0],), float("nan"), device=codes.device)
        k = int(self.n_components)
        diff = codes[:, None, :].double() - self.means[None, :k].double()  # (B, K, D)
        y = torch.einsum("bkd,kde->bke", diff, self.prec_chol[:k].double())  # whitened: ‖(x−m)ᵀ P‖² is the Mahalanobis term
        log_det = torch.diagonal(self.prec_chol[:k].double(), dim1=-2, dim2=-1).log().sum(-1)  # log|P| = ½ log|Σ⁻¹|
        log_comp = -0.5 * (codes.shape[1] * math.log(2 * math.pi) + y.pow(2).sum(-1)) + log_det + self.log_weights[:k].double()
        return (-torch.logsumexp(log_comp, dim=1)).to(codes.dtype)
