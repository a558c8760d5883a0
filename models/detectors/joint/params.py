"""Hyper-parameters of the ``joint`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from models.params import Family, check_params


@dataclass
class JointParams:
    """Jointly trained encoder WGAN-GP hyper-parameters (config section ``model``)."""

    name: str = "joint3d"
    latent_dim: int = 128  # N_z (study: 512 on 2D images)
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # G, D and E widths
    strides: list[int] = field(default_factory=lambda: [2, 2, 1])  # product must divide the patch size
    z_norm: Literal["unit", "none"] = "unit"  # unit: G normalises its input code to unit length (study/pGAN)
    lambda_gp: float = 10.0
    n_critic: int = 5  # critic steps per generator/encoder step
    encoder_weight: float = 1.0  # μ: weight of ‖G(z) − G(E(G(z)))‖₁ in the G/E step
    score_lambda: float = 0.05  # λ in a = λ·L_n + (1−λ)·L_o
    betas: tuple[float, float] = (0.5, 0.9)  # Adam betas for all networks (WGAN-GP: (0, 0.9) or (0.5, 0.9))
    arch: Literal["monai", "dcgan"] = "monai"  # networks (models.nets): MONAI Generator/Critic/Regressor or DCGAN-style
    g_norm: Literal["batch", "instance", "layer", "none"] = "batch"  # dcgan arch only
    d_norm: Literal["instance", "layer", "none"] = "none"  # critic norm, dcgan arch only
    e_norm: Literal["instance", "layer", "none"] = "none"  # encoder norm, dcgan arch only (the "j4" design: layer)
    e_init_scale: float = 1.0  # multiplies the initial weights and bias of E's output layer (a diagnostic knob, see models.detectors.joint.model)

    @classmethod
    def tiny(cls) -> "JointParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls(latent_dim=6, channels=[4, 8], strides=[2, 2])

    def check(self, cfg) -> list[str]:
        errs = check_params(self, cfg)
        if not 0.0 <= self.score_lambda <= 1.0:
            errs.append("model.score_lambda: must be in [0, 1]")
        if not self.e_init_scale > 0:
            errs.append("model.e_init_scale: must be > 0")
        if self.lambda_gp < 0 or self.encoder_weight < 0:
            errs.append("model.lambda_gp / model.encoder_weight: must be ≥ 0")
        return errs


FAMILY = Family("joint", JointParams, ("joint", "joint_ln", "joint_lo"), gan=True)
