"""BiGAN/ALI (Donahue et al. 2017; Dumoulin et al. 2017): the adversarial autoencoder of
:mod:`models.nets.adversarial_ae` with a joint (x, z) discriminator; see there for losses and scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.detectors.bigan.params import BiGANParams
from models.nets import blocks
from models.nets.adversarial_ae import AdversarialAE, bce_fake, bce_real
from models.registry import DETECTORS, register_2d_3d


class PairDiscriminator(nn.Module):
    """BiGAN joint discriminator D(x, z) → (B,) logit; ``forward_with_features`` also returns f(x, z)."""

    def __init__(self, dims: int, in_channels: int, patch: int, latent_dim: int, channels, strides, features: int) -> None:
        super().__init__()
        self.image = blocks.EncoderNet(dims, in_channels, patch, features, channels, strides)  # conv trunk → Linear(features)
        self.code = nn.Linear(latent_dim, features)
        self.joint = nn.Sequential(nn.Linear(2 * features, features), nn.LeakyReLU(0.2))
        self.out = nn.Linear(features, 1)

    def forward_with_features(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.joint(F.leaky_relu(torch.cat([self.image(x), self.code(z)], 1), 0.2))
        return self.out(h).view(-1), h

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x, z)[0]


@register_2d_3d("bigan")
class BiGAN(AdversarialAE):
    """BiGAN/ALI with a joint (x, z) discriminator"""


    def __init__(self, params: BiGANParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        self.D = PairDiscriminator(self.spatial_dims, in_channels, patch_size, params.latent_dim,
                                   list(params.channels), list(params.strides), params.disc_features)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [self._adam([self.D], lr), self._adam([self.E, self.G], lr)]

    def training_step(self, x, optimizers, max_grad_norm):
        opt_d, opt_eg = optimizers
        x = blocks.plain(x)
        z = self.sample_z(x.shape[0], x.device)
        z_hat = self.E(x)
        fake = self.G(z)
        # discriminator: (x, E(x)) real, (G(z), z) fake
        d_loss = bce_real(self.D(x, z_hat.detach())) + bce_fake(self.D(fake.detach(), z))
        self._step(d_loss, opt_d, [self.D], max_grad_norm)
        # encoder + generator: non-saturating, labels swapped
        self.D.requires_grad_(False)
        try:
            e_adv = bce_fake(self.D(x, z_hat))
            g_adv = bce_real(self.D(fake, z))
        finally:
            self.D.requires_grad_(True)
        g_loss = e_adv + g_adv
        self._step(g_loss, opt_eg, [self.E, self.G], max_grad_norm)
        return {"loss": d_loss.item() + g_loss.item(), "d_loss": d_loss.item(), "g_loss": g_loss.item(),
                "e_adv": e_adv.item(), "g_adv": g_adv.item()}

    def disc_terms(self, x, z_hat, rec):
        logit_x, f_x = self.D.forward_with_features(x, z_hat)
        _, f_rec = self.D.forward_with_features(rec, z_hat)
        return -logit_x, (f_x - f_rec).norm(2, dim=1)


BiGAN2D, BiGAN3D = DETECTORS["bigan2d"], DETECTORS["bigan3d"]
