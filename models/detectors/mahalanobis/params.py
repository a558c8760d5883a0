"""Hyper-parameters of the ``mahalanobis`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from models.params import Family


@dataclass
class MahalanobisParams:
    """Mahalanobis baseline hyper-parameters (config section ``model``)."""

    name: str = "mahalanobis3d"
    size: int = 12  # each patch is average-pooled to size^dims pixels per channel first (0: raw pixels at full resolution)
    ridge: float = 1e-6  # added to the diagonal of the Ledoit-Wolf covariance, so that it is always invertible

    @classmethod
    def tiny(cls) -> "MahalanobisParams":
        """The smallest useful instance, for the contract tests (8-voxel patches)."""
        return cls(size=4)

    def check(self, cfg) -> list[str]:
        errs = []
        if self.size < 0:
            errs.append("model.size: must be ≥ 0 (0: no pooling)")
        if not self.ridge > 0:
            errs.append("model.ridge: must be > 0")
        return errs


FAMILY = Family("mahalanobis", MahalanobisParams, ("mahalanobis",))
