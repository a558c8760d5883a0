"""Hyper-parameters of the ``pca`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from models.params import Family


@dataclass
class PCAParams:
    """PCA baseline hyper-parameters (config section ``model``)."""

    name: str = "pca3d"
    n_components: int = 32  # k principal components kept
    whiten: bool = False  # only changes ``pca_latent`` (→ Hotelling T²); the reconstruction is the same

    @classmethod
    def tiny(cls) -> "PCAParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls(n_components=3)

    def check(self, cfg) -> list[str]:
        if self.n_components < 1:
            return ["model.n_components: must be ≥ 1"]
        return []


FAMILY = Family("pca", PCAParams, ("pca_recon", "pca_latent"))
