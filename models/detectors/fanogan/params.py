"""Hyper-parameters of the ``fanogan`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from models.params import Family, WGANParams


@dataclass
class FAnoGANParams(WGANParams):
    """f-AnoGAN hyper-parameters: the WGAN-GP's, and the encoder phase."""

    name: str = "fanogan3d"
    kappa: float = 1.0
    encoder_epochs_fraction: float = 0.5

    @classmethod
    def tiny(cls) -> "FAnoGANParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls(latent_dim=6, channels=[4, 8], strides=[2, 2])


FAMILY = Family("fanogan", FAnoGANParams, ("fanogan", "residual", "feature"), gan=True)
