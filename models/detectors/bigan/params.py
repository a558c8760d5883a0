"""Hyper-parameters of the ``bigan`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from models.params import AdversarialAEParams, Family


@dataclass
class BiGANParams(AdversarialAEParams):
    """BiGAN/ALI hyper-parameters."""

    name: str = "bigan3d"
    disc_features: int = 128  # width of the joint discriminator's image/code branches and hidden layer

    @classmethod
    def tiny(cls) -> "BiGANParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls(latent_dim=6, channels=[4, 8], strides=[2, 2], disc_features=8)

    def check(self, cfg) -> list[str]:
        errs = super().check(cfg)
        if self.disc_features < 1:
            errs.append("model.disc_features: must be ≥ 1")
        return errs


FAMILY = Family("bigan", BiGANParams, ("l1", "l2", "enc_fm", "disc_fm", "disc"), gan=True)
