"""BiGAN/ALI and α-GAN detectors, 2D and 3D, as compared in "GAN for unsupervised anomaly detection on X-ray images" (MURA).

Papers: BiGAN, Donahue et al. 2017 (https://arxiv.org/abs/1605.09782); ALI, Dumoulin et al. 2017
(https://arxiv.org/abs/1606.00704); α-GAN, Rosca et al. 2017 (https://arxiv.org/abs/1706.04987).

Both have an encoder E (``EncoderNet``) and a generator G (``GeneratorNet``, sigmoid output in
[0, 1]) from :mod:`models.nets`, a prior z ~ N(0, I) (not normalised), standard
(non-saturating) GAN losses with BCE on logits (these are *not* WGANs), and Adam with
β = ``betas`` (default (0.5, 0.999)) for every network.

BiGAN/ALI (Donahue et al. 2017; Dumoulin et al. 2017), ``bigan2d``/``bigan3d``:

- a joint discriminator D(x, z) (:class:`PairDiscriminator`): an image branch (an
  ``EncoderNet``: conv trunk + linear map to ``disc_features`` values), a code branch (linear),
  LeakyReLU on their concatenation, then a small MLP (linear + LeakyReLU → linear) to a logit;
  its hidden layer is f(x, z). No dropout or batch norm, so scoring is deterministic and
  per-sample;
- D step: BCE(D(x, E(x)), real) + BCE(D(G(z), z), fake) on detached E(x) and G(z);
- E/G step (non-saturating, labels swapped): BCE(D(x, E(x)), fake) + BCE(D(G(z), z), real).
  E and G are never chained during training, so G(E(x)) is often a poor reconstruction.

α-GAN (Rosca et al. 2017), ``alphagan2d``/``alphagan3d``: an autoencoder x → ẑ = E(x) → x̂ = G(ẑ)
plus an image discriminator D (``CriticNet`` output used as a logit, no sigmoid; its
penultimate layer is f(x)) and a code discriminator C (MLP on the latent). With ``arch: monai``
(MONAI Regressor/Generator, one non-linearity each) the autoencoder does not reconstruct at all
on PneumoniaMNIST (val L1 worse than the mean training image); ``arch: dcgan`` (:mod:`models.nets`)
does:

- D step: BCE(D(x), real) + BCE(D(x̂), fake) + BCE(D(G(z)), fake); C step: BCE(C(z), real) +
  BCE(C(ẑ), fake) (fakes detached);
- encoder loss: ``rec_weight``·‖x − x̂‖₁ + BCE(C(ẑ), real); generator loss:
  ``rec_weight``·‖x − x̂‖₁ + BCE(D(x̂), real) + BCE(D(G(z)), real) (non-saturating; the L1 is the
  mean over voxels). As in Rosca et al.'s algorithm, E gets gradients only from its own loss
  (reconstruction + code adversary), G only from its own (reconstruction + image adversary):
  the two losses are back-propagated into their own parameters (``backward(inputs=...)``).
- ``rec_weight`` default 10: the X-ray GAN study gives no value but reports near-perfect (slightly blurry)
  reconstructions, i.e. the L1 term dominates; with the L1 averaged over voxels (≈ 0.05–0.1 for
  [0, 1] images) and BCE terms ≈ 0.7, a weight of 1 would leave the adversarial terms dominant.

Scores (those of the X-ray GAN study; higher = more anomalous), with x̂ = G(E(x)), one forward pass:
``l1`` = mean|x − x̂|; ``l2`` = mean (x − x̂)²; ``enc_fm`` = ‖E_h(x) − E_h(x̂)‖₂ (E_h: the encoder's
convolutional trunk); ``disc_fm`` = ‖f(x) − f(x̂)‖₂, where f is D's penultimate layer
(α-GAN: the image discriminator; BiGAN: the joint discriminator's hidden layer on the pairs
(x, ẑ) and (x̂, ẑ) with the same code ẑ = E(x), as in Zenati et al. 2018); ``disc`` = −logit of
"real" (α-GAN: D(x); BiGAN: D(x, E(x))). Residual map: |x − x̂|.
Validation loss: per-sample mean |x − G(E(x))| on normal validation data.

The training-step dict reports each part and ``loss``, the sum of all networks' objectives
(BiGAN: d_loss + g_loss; α-GAN: d_loss + c_loss + e_loss + g_loss) — a finiteness monitor for
the training curves, not a selection criterion (selection uses the validation L1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models import nets
from models.catalog import AdversarialAEParams, AlphaGANParams, BiGANParams
from models.registry import MODELS, Detector, ScoreOutput, register_2d_3d


def bce_real(logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def bce_fake(logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with LeakyReLU(0.2) between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class PairDiscriminator(nn.Module):
    """BiGAN joint discriminator D(x, z) → (B,) logit; ``forward_with_features`` also returns f(x, z)."""

    def __init__(self, dims: int, in_channels: int, patch: int, latent_dim: int, channels, strides, features: int) -> None:
        super().__init__()
        self.image = nets.EncoderNet(dims, in_channels, patch, features, channels, strides)  # conv trunk → Linear(features)
        self.code = nn.Linear(latent_dim, features)
        self.joint = nn.Sequential(nn.Linear(2 * features, features), nn.LeakyReLU(0.2))
        self.out = nn.Linear(features, 1)

    def forward_with_features(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.joint(F.leaky_relu(torch.cat([self.image(x), self.code(z)], 1), 0.2))
        return self.out(h).view(-1), h

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x, z)[0]


class AdversarialAE(Detector):
    """Base: encoder E and generator G with the seed-002 reconstruction/feature/discriminator scores."""


    def __init__(self, params: AdversarialAEParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        d, ch, st = self.spatial_dims, list(params.channels), list(params.strides)
        self.G = nets.GeneratorNet(d, params.latent_dim, in_channels, patch_size, ch, st, params.arch, params.g_norm)
        self.E = nets.EncoderNet(d, in_channels, patch_size, params.latent_dim, ch, st, params.arch, params.e_norm)

    def sample_z(self, n: int, device) -> torch.Tensor:
        return torch.randn(n, self.params.latent_dim, device=device)

    def _adam(self, modules: list[nn.Module], lr: float) -> torch.optim.Adam:
        return torch.optim.Adam([p for m in modules for p in m.parameters()], lr=lr, betas=tuple(self.params.betas))

    def _step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, modules: list[nn.Module], max_grad_norm: float) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for m in modules for p in m.parameters()], max_grad_norm)
        opt.step()

    def validation_loss(self, x):
        x = nets.plain(x)
        return (x - self.G(self.E(x))).abs().flatten(1).mean(1)

    def disc_terms(self, x: torch.Tensor, z_hat: torch.Tensor, rec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(disc score −logit(real) of the query, ‖f(x) − f(x̂)‖₂)."""
        raise NotImplementedError

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = nets.plain(x)
        z_hat = self.E(x)
        rec = self.G(z_hat)
        diff = (x - rec).flatten(1)
        enc_fm = (self.E.features(x) - self.E.features(rec)).norm(2, dim=1)
        disc, disc_fm = self.disc_terms(x, z_hat, rec)
        scores = {"l1": diff.abs().mean(1), "l2": diff.pow(2).mean(1), "enc_fm": enc_fm, "disc_fm": disc_fm, "disc": disc}
        return ScoreOutput.of(scores, x, rec)


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
        x = nets.plain(x)
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


@register_2d_3d("alphagan")
class AlphaGAN(AdversarialAE):
    """α-GAN: autoencoder with image and code discriminators (Rosca et al. 2017)"""


    def __init__(self, params: AlphaGANParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        self.D = nets.CriticNet(self.spatial_dims, in_channels, patch_size, list(params.channels), list(params.strides), params.arch, params.d_norm)
        self.C = mlp([params.latent_dim, params.code_hidden, params.code_hidden, 1])

    def code_logit(self, z: torch.Tensor) -> torch.Tensor:
        return self.C(z).view(-1)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [self._adam([self.D], lr), self._adam([self.C], lr), self._adam([self.E], lr), self._adam([self.G], lr)]

    def training_step(self, x, optimizers, max_grad_norm):
        opt_d, opt_c, opt_e, opt_g = optimizers
        x = nets.plain(x)
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


BiGAN2D, BiGAN3D = MODELS["bigan2d"], MODELS["bigan3d"]
AlphaGAN2D, AlphaGAN3D = MODELS["alphagan2d"], MODELS["alphagan3d"]
