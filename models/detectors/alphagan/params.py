"""Hyper-parameters of the ``alphagan`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from models.params import AdversarialAEParams, Family


@dataclass
class AlphaGANParams(AdversarialAEParams):
    """α-GAN hyper-parameters."""

    name: str = "alphagan3d"
    rec_weight: float = 10.0  # weight of the voxel-mean L1 reconstruction loss (the X-ray GAN study gives none)
    code_hidden: int = 256  # width of the code discriminator's two hidden layers

    @classmethod
    def tiny(cls) -> "AlphaGANParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls(latent_dim=6, channels=[4, 8], strides=[2, 2], code_hidden=8)

    def check(self, cfg) -> list[str]:
        errs = super().check(cfg)
        if self.rec_weight < 0:
            errs.append("model.rec_weight: must be ≥ 0")
        if self.code_hidden < 1:
            errs.append("model.code_hidden: must be ≥ 1")
        return errs


FAMILY = Family("alphagan", AlphaGANParams, ("l1", "l2", "enc_fm", "disc_fm", "disc"), gan=True)
