"""Hyper-parameters of the ``knn`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from models.params import Family


@dataclass
class KNNParams:
    """k-NN-on-PCA baseline hyper-parameters (config section ``model``)."""

    name: str = "knn3d"
    n_components: int = 32  # PCA components (capped at N − 1 training patches)
    k: int = 5  # neighbours averaged (capped at N)
    whiten: bool = False  # divide each PCA coordinate by its standard deviation

    @classmethod
    def tiny(cls) -> "KNNParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls(n_components=3, k=2)

    def check(self, cfg) -> list[str]:
        errs = []
        if self.n_components < 1:
            errs.append("model.n_components: must be ≥ 1")
        if self.k < 1:
            errs.append("model.k: must be ≥ 1")
        return errs


FAMILY = Family("knn", KNNParams, ("knn", "knn_maha"))
