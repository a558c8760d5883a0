"""f-AnoGAN (Schlegl et al. 2019): the WGAN-GP of :mod:`models.nets.wgan_gp`, then an izi_f encoder.

See :mod:`models.nets.wgan_gp` for the training phases and the scores.
"""

from __future__ import annotations

import torch

from models.detector import ScoreOutput
from models.detectors.fanogan.params import FAnoGANParams
from models.nets import blocks
from models.nets.wgan_gp import WGANGP
from models.registry import DETECTORS, register_2d_3d


@register_2d_3d("fanogan")
class FAnoGAN(WGANGP):
    """WGAN-GP followed by an izi_f encoder (f-AnoGAN)"""


    def __init__(self, params: FAnoGANParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        self.E = blocks.EncoderNet(self.spatial_dims, in_channels, patch_size, params.latent_dim, params.channels, params.strides,
                                 params.arch, params.d_norm)
        self.register_buffer("encoder_phase", torch.zeros((), dtype=torch.bool))

    def encoder(self):
        return self.E

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return super().configure_optimizers(lr) + [torch.optim.Adam(self.E.parameters(), lr=lr, betas=tuple(self.params.betas))]

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        switch = min(max(1, round(epochs * (1 - self.params.encoder_epochs_fraction))), epochs - 1) if epochs > 1 else 0
        self.encoder_phase.fill_(epoch >= switch)

    def selection_active(self) -> bool:
        return bool(self.encoder_phase)

    def izi_f(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (1/N_x)‖x − G(E(x))‖² and (1/n_f)‖f(x) − f(G(E(x)))‖², and G(E(x))."""
        g = self.G(self.E(x))
        rec = (x - g).pow(2).flatten(1).mean(1)
        feat = (self.D.features(x) - self.D.features(g)).pow(2).mean(1)
        return rec, feat, g

    def training_step(self, x, optimizers, max_grad_norm):
        if not bool(self.encoder_phase):
            return self.gan_step(x, optimizers[0], optimizers[1], max_grad_norm)
        x = blocks.plain(x)
        opt_e = optimizers[2]
        self.G.requires_grad_(False)
        self.D.requires_grad_(False)
        try:
            rec, feat, _ = self.izi_f(x)
            loss = (rec + self.params.kappa * feat).mean()
            opt_e.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.E.parameters(), max_grad_norm)
            opt_e.step()
        finally:
            self.G.requires_grad_(True)
            self.D.requires_grad_(True)
        return {"loss": loss.item(), "izi": rec.mean().item(), "izi_feature": feat.mean().item()}

    def validation_loss(self, x):
        rec, feat, _ = self.izi_f(blocks.plain(x))
        return rec + self.params.kappa * feat

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = blocks.plain(x)
        rec, feat, g = self.izi_f(x)
        return ScoreOutput.of({"fanogan": rec + self.params.kappa * feat, "residual": rec, "feature": feat}, x, g)


FAnoGAN2D, FAnoGAN3D = DETECTORS["fanogan2d"], DETECTORS["fanogan3d"]
