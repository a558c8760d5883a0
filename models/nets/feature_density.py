"""Density of feature vectors of the normal training data: k-NN distance and Gaussian Mahalanobis.

Why: a network trained on a pretext task (synthetic-anomaly segmentation, transformation
prediction) or a PCA projection gives each image a feature vector f(x). Normal images fill a region
of that space; an anomaly tends to fall outside it (PaDiM/PatchCore-style, with our own features
since no pretrained weights are reachable offline; METHODS.md "Feature density").

- ``knn`` = mean Euclidean distance from f(x) to its k nearest training features (scikit-learn's
  ``NearestNeighbors`` semantics, computed in torch; k is capped at the number of training rows).
- ``maha`` = sqrt((f − μ)ᵀ Σ⁻¹ (f − μ)) with μ, Σ from scikit-learn's ``LedoitWolf`` (shrunk
  covariance, well-conditioned even with fewer samples than dimensions).

The bank of training features has a data-dependent number of rows, so its buffers are resized to
the checkpoint's shapes when a state dict is loaded (:meth:`_load_from_state_dict`); everything
else about checkpoints stays the registry's contract (a freshly built model loads a state dict).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

_RESIZABLE = ("bank", "mean", "precision")


class FeatureDensity(nn.Module):
    """k-NN and Mahalanobis scores of feature vectors against a bank fitted on normal training data."""

    def __init__(self, k: int = 5, mahalanobis: bool = True) -> None:
        super().__init__()
        self.k = k
        self.mahalanobis = mahalanobis
        self.register_buffer("bank", torch.zeros(0, 0))  # (N, F) training features; 0 rows = not fitted
        self.register_buffer("mean", torch.zeros(0))  # (F,)
        self.register_buffer("precision", torch.zeros(0, 0))  # (F, F) LedoitWolf precision; empty if off

    @property
    def fitted(self) -> bool:
        return self.bank.shape[0] > 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in _RESIZABLE:  # data-dependent shapes: take the checkpoint's
            key = prefix + name
            if key in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[key], device=self._buffers[name].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fit(self, feats: np.ndarray | torch.Tensor) -> dict[str, float]:
        """Fit on training features (N, F); rows with non-finite values are dropped."""
        f = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, np.float64)
        f = f[np.isfinite(f).all(1)]
        dev = self.bank.device
        self.bank = torch.as_tensor(f, dtype=torch.float32, device=dev)
        out = {"bank_rows": float(len(f)), "feature_dim": float(f.shape[1]) if f.ndim == 2 else 0.0}
        if self.mahalanobis and len(f) >= 2:
            lw = LedoitWolf().fit(f)
            self.mean = torch.as_tensor(lw.location_, dtype=torch.float32, device=dev)
            self.precision = torch.as_tensor(lw.precision_, dtype=torch.float32, device=dev)
            out["lw_shrinkage"] = float(lw.shrinkage_)
        else:
            self.mean = torch.zeros(0, device=dev)
            self.precision = torch.zeros(0, 0, device=dev)
        return out

    def knn(self, feats: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Mean distance to the k nearest bank rows, (B,); NaN when not fitted."""
        if not self.fitted:
            return torch.full((len(feats),), float("nan"), device=feats.device)
        k = max(1, min(self.k, self.bank.shape[0]))
        f = feats.float()
        out = []
        for i in range(0, len(f), chunk):
            d = torch.cdist(f[i : i + chunk].double(), self.bank.double())  # double: small distances stay exact
            out.append(d.topk(k, dim=1, largest=False).values.mean(1).float())
        return torch.cat(out) if out else torch.zeros(0, device=feats.device)

    def maha(self, feats: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance under the LedoitWolf Gaussian, (B,); NaN when not fitted."""
        if self.precision.numel() == 0:
            return torch.full((len(feats),), float("nan"), device=feats.device)
        d = feats.double() - self.mean.double()
        return torch.einsum("bi,ij,bj->b", d, self.precision.double(), d).clamp_min(0).sqrt().float()
