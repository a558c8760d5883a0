"""WGAN-GP detectors: AnoGAN latent search and f-AnoGAN, 2D and 3D.

Papers: WGAN-GP, Gulrajani et al. 2017 (https://arxiv.org/abs/1704.00028); AnoGAN, Schlegl et al. 2017
(https://arxiv.org/abs/1703.05921); f-AnoGAN, Schlegl et al. 2019 (https://doi.org/10.1016/j.media.2019.01.010);
restarts as in ADGAN, Deecke et al. 2018 (https://arxiv.org/abs/1812.02288). Used on 3D nodule cubes by Santos Buitrago et al. 2018.

The shared base :class:`WGANGP` of the ``anogan`` and ``fanogan`` families (``models/detectors/``).
Networks from :mod:`models.nets.blocks` (MONAI blocks): generator G (sigmoid output in [0, 1]) and critic
D (no sigmoid, instance norm, no dropout), with f(x) = D's penultimate layer.

Training (one :meth:`training_step` per batch): a critic step every call,
``E[D(G(z))] − E[D(x)] + λ_gp·E[(‖∇_x̂ D(x̂)‖₂ − 1)²]`` (λ_gp = 10), and a generator step
``−E[D(G(z))]`` every ``n_critic`` calls (5). Adam with β = (0.5, 0.9). The call counter is a
buffer, so a resumed run keeps the schedule. ``arch``: ``monai`` (MONAI Generator and a *patch*
critic: the mean of a 1-channel map) or ``dcgan`` (a deeper G and a critic with a global linear
head, :mod:`models.nets`). Validation loss for epoch selection (normal data only, lower = better),
``selection``: ``nn_bank`` (default) — each held-out normal's mean |x − G(z_k)| to the nearest of
``val_bank`` samples from fixed codes (how well G covers held-out normals; the search residual
after zero steps); ``wasserstein`` — D(x) − E_z[D(G(z))] with the *current* critic, which grows as
the critic learns and so always selected the untrained epoch 0 (the old behaviour, kept for reference).

**anogan** scoring: find z by gradient descent (``search_steps`` = 100, Adam or SGD-momentum) on
L(z) = (1−λ)·Σ|x − G(z)| + λ·Σ|f(x) − f(G(z))| with λ = 0.5, **batched** over all queries and
``restarts`` initial codes at once: z is one [R·B, N_z] tensor, the loss is a sum over samples,
so each sample's gradient is its own. G and D are frozen; f(x) is computed once. The best restart
per query is kept (Deecke et al.). The R initial codes are drawn once per batch from the prior
with the scoring generator and shared by every query, so a query's score does not depend on the
batch it is in. After every step z is projected back into the prior's support (``search_project``).
With ``search_normalise`` each term is divided by its typical size on the normal training images
(s_res, s_feat, fitted after training), so λ weighs them in units of normal variation rather than
in the critic's arbitrary feature scale. Scores: ``anogan`` = L(z*), ``residual`` = Σ|x − G(z*)|,
``feature`` = Σ|f(x) − f(G(z*))| (each divided by its scale when normalised).

**fanogan**: the same WGAN-GP for the first part of training, then (last
``encoder_epochs_fraction`` of the epochs) an encoder E (``EncoderNet``) trained with G and D frozen
on izi_f: (1/N_x)·‖x − G(E(x))‖² + κ·(1/n_f)·‖f(x) − f(G(E(x)))‖², κ = 1. Model selection and
early stopping only count in the encoder phase (:meth:`selection_active`). Scores: ``fanogan`` =
izi_f, ``residual`` and ``feature`` terms; one forward pass, no search.
"""

from __future__ import annotations

import torch

from models.detector import Detector
from models.nets import blocks
from models.nets.gan_losses import critic_loss, gradient_penalty
from models.params import WGANParams


class WGANGP(Detector):
    """WGAN-GP generator and critic with the shared training loop."""


    def __init__(self, params: WGANParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        d = self.spatial_dims
        self.G = blocks.GeneratorNet(d, params.latent_dim, in_channels, patch_size, params.channels, params.strides, params.arch, params.g_norm)
        self.D = blocks.CriticNet(d, in_channels, patch_size, params.channels, params.strides, params.arch, params.d_norm)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def generator(self):
        return self.G

    def sample_z(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (n, self.params.latent_dim)
        if self.params.latent_prior == "uniform":
            return (torch.rand(shape, generator=generator) * 2 - 1).to(device)
        return torch.randn(shape, generator=generator).to(device)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        b = tuple(self.params.betas)
        return [torch.optim.Adam(self.G.parameters(), lr=lr, betas=b), torch.optim.Adam(self.D.parameters(), lr=lr, betas=b)]

    def gan_step(self, x: torch.Tensor, opt_g, opt_d, max_grad_norm: float) -> dict[str, float]:
        x = blocks.plain(x)
        fake = self.G(self.sample_z(len(x), x.device)).detach()
        gp = gradient_penalty(self.D, x, fake)
        loss_d, w = critic_loss(self.D(x), self.D(fake), gp, self.params.lambda_gp)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        torch.nn.utils.clip_grad_norm_(self.D.parameters(), max_grad_norm)
        opt_d.step()
        self.steps += 1
        out = {"loss": loss_d.item(), "wasserstein": w, "gp": gp.item()}
        if int(self.steps) % self.params.n_critic == 0:
            self.D.requires_grad_(False)
            g_loss = -self.D(self.G(self.sample_z(len(x), x.device))).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.G.parameters(), max_grad_norm)
            opt_g.step()
            self.D.requires_grad_(True)
            out["g_loss"] = g_loss.item()
        return out

    def training_step(self, x, optimizers, max_grad_norm):
        return self.gan_step(x, optimizers[0], optimizers[1], max_grad_norm)

    def validation_loss(self, x):
        """Per-sample loss on normal validation images for epoch selection (lower = better).

        ``nn_bank`` (default): the mean |x − G(z_k)| to the nearest of ``val_bank`` samples from a
        fixed set of codes (the same codes every epoch) — how well G covers held-out normals; it is
        the AnoGAN residual after zero search steps with ``val_bank`` restarts, and it does not
        depend on the critic. ``wasserstein``: D(x) − E_z[D(G(z))], the critic's separation of
        held-out normals from samples; it is *not* comparable across epochs (the critic changes;
        it grows as the critic learns, so its minimum is the untrained epoch 0), kept for reference.
        """
        x = blocks.plain(x)
        if self.params.selection == "wasserstein":
            z = self.sample_z(64, x.device)  # drawn from torch's global RNG, which the train stage fixes
            return self.D(x) - self.D(self.G(z)).mean()
        z = self.sample_z(self.params.val_bank, x.device, torch.Generator().manual_seed(12345))
        best = torch.full((len(x),), float("inf"), device=x.device)
        flat = x.flatten(1)
        for i in range(0, len(z), 64):
            g = self.G(z[i : i + 64]).flatten(1)
            best = torch.minimum(best, torch.cdist(flat, g, p=1).min(1).values / flat.shape[1])
        return best
