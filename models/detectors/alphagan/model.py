"""α-GAN (Rosca et al. 2017): the adversarial autoencoder of :mod:`models.nets.adversarial_ae` with
image and code discriminators; see there for losses and scores."""

from __future__ import annotations

import torch

from models.detectors.alphagan.params import AlphaGANParams
from models.nets import blocks
from models.nets.adversarial_ae import AdversarialAE, bce_fake, bce_real, mlp
from models.registry import DETECTORS, register_2d_3d


@register_2d_3d("alphagan")
class AlphaGAN(AdversarialAE):
    """α-GAN: autoencoder with image and code discriminators (Rosca et al. 2017)"""


    def __init__(self, params: AlphaGANParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        self.D = blocks.CriticNet(self.spatial_dims, in_channels, patch_size, list(params.channels), list(params.strides), params.arch, params.d_norm)
        self.C = mlp([params.latent_dim, params.code_hidden, params.code_hidden, 1])

    def code_logit(self, z: torch.Tensor) -> torch.Tensor:
        return self.C(z).view(-1)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [self._adam([self.D], lr), self._adam([self.C], lr), self._adam([self.E], lr), self._adam([self.G], lr)]

    def training_step(self, x, optimizers, max_grad_norm):
        opt_d, opt_c, opt_e, opt_g = optimizers
        x = blocks.plain(x)
        z = self.sample_z(x.shape[0], x.device)
        z_hat = self.E(x)
        rec = self.G(z_hat)
        fake = self.G(z)
        # image discriminator: x real; reconstructions and samples fake
        d_loss = bce_real(self.D(x)) + bce_fake(self.D(rec.detach())) + bce_fake(self.D(fake.detach()))
        self._step(d_loss, opt_d, [self.D], max_grad_norm)
        # code discriminator: prior real, encodings fake
        c_loss = bce_real(self.code_logit(z)) + bce_fake(self.code_logit(z_hat.detach()))
        self._step(c_loss, opt_c, [self.C], max_grad_norm)
        # encoder and generator, each from its own loss
        self.D.requires_grad_(False)
        self.C.requires_grad_(False)
        try:
            rec_l1 = (x - rec).abs().flatten(1).mean(1).mean()
            e_adv = bce_real(self.code_logit(z_hat))
            g_adv = bce_real(self.D(rec)) + bce_real(self.D(fake))
        finally:
            self.D.requires_grad_(True)
            self.C.requires_grad_(True)
        w = self.params.rec_weight
        e_loss = w * rec_l1 + e_adv
        g_loss = w * rec_l1 + g_adv
        e_params, g_params = list(self.E.parameters()), list(self.G.parameters())
        opt_e.zero_grad(set_to_none=True)
        opt_g.zero_grad(set_to_none=True)
        e_loss.backward(inputs=e_params, retain_graph=True)
        g_loss.backward(inputs=g_params)
        torch.nn.utils.clip_grad_norm_(e_params, max_grad_norm)
        torch.nn.utils.clip_grad_norm_(g_params, max_grad_norm)
        opt_e.step()
        opt_g.step()
        return {"loss": d_loss.item() + c_loss.item() + e_loss.item() + g_loss.item(),
                "d_loss": d_loss.item(), "c_loss": c_loss.item(), "e_loss": e_loss.item(), "g_loss": g_loss.item(),
                "rec": rec_l1.item(), "e_adv": e_adv.item(), "g_adv": g_adv.item()}

    def disc_terms(self, x, z_hat, rec):
        logit_x, f_x = self.D.forward_with_features(x)
        _, f_rec = self.D.forward_with_features(rec)
        return -logit_x, (f_x - f_rec).norm(2, dim=1)


AlphaGAN2D, AlphaGAN3D = DETECTORS["alphagan2d"], DETECTORS["alphagan3d"]
