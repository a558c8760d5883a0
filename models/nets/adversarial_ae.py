"""The shared base :class:`AdversarialAE` of the BiGAN/ALI and α-GAN detectors (``models/detectors/bigan``, ``alphagan``), 2D and 3D,
as compared in "GAN for unsupervised anomaly detection on X-ray images" (MURA).

Papers: BiGAN, Donahue et al. 2017 (https://arxiv.org/abs/1605.09782); ALI, Dumoulin et al. 2017
(https://arxiv.org/abs/1606.00704); α-GAN, Rosca et al. 2017 (https://arxiv.org/abs/1706.04987).

Both have an encoder E (``EncoderNet``) and a generator G (``GeneratorNet``, sigmoid output in
[0, 1]) from :mod:`models.nets.blocks`, a prior z ~ N(0, I) (not normalised), standard
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

from models.detector import Detector, ScoreOutput
from models.nets import blocks
from models.params import AdversarialAEParams


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


class AdversarialAE(Detector):
    """Base: encoder E and generator G with the seed-002 reconstruction/feature/discriminator scores."""


    def __init__(self, params: AdversarialAEParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        d, ch, st = self.spatial_dims, list(params.channels), list(params.strides)
        self.G = blocks.GeneratorNet(d, params.latent_dim, in_channels, patch_size, ch, st, params.arch, params.g_norm)
        self.E = blocks.EncoderNet(d, in_channels, patch_size, params.latent_dim, ch, st, params.arch, params.e_norm)

    def generator(self):
        return self.G

    def encoder(self):
        return self.E

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
        x = blocks.plain(x)
        return (x - self.G(self.E(x))).abs().flatten(1).mean(1)

    def disc_terms(self, x: torch.Tensor, z_hat: torch.Tensor, rec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(disc score −logit(real) of the query, ‖f(x) − f(x̂)‖₂)."""
        raise NotImplementedError

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = blocks.plain(x)
        z_hat = self.E(x)
        rec = self.G(z_hat)
        diff = (x - rec).flatten(1)
        enc_fm = (self.E.features(x) - self.E.features(rec)).norm(2, dim=1)
        disc, disc_fm = self.disc_terms(x, z_hat, rec)
        scores = {"l1": diff.abs().mean(1), "l2": diff.pow(2).mean(1), "enc_fm": enc_fm, "disc_fm": disc_fm, "disc": disc}
        return ScoreOutput.of(scores, x, rec)
