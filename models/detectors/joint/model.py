"""WGAN-GP with a jointly trained encoder (Berg et al. 2019, https://arxiv.org/abs/1905.11034), in 2D and 3D.

Networks (from :mod:`models.nets`, built from MONAI blocks): generator G (``GeneratorNet``,
sigmoid output in [0, 1]), critic D (``CriticNet``: no sigmoid, instance norm) and encoder E
(``EncoderNet``).

Training (one call of :meth:`training_step` per batch):

- every call, a critic step: ``E[D(G(z))] − E[D(x)] + λ_gp·E[(‖∇_x̂ D(x̂)‖₂ − 1)²]`` (λ_gp = 10);
- every ``n_critic``-th call (default 5), one generator step that updates θ_G and θ_E *together*
  with ``−E[D(G(z))] + μ·E‖G(z) − G(E(G(z)))‖₁`` (the L1 term is the mean over voxels; μ =
  ``encoder_weight``). Gradients of the image-space encoder loss reach both G (through both of
  its sides) and E. The call counter is a buffer, so a resumed run continues the same schedule.

Latent prior and its normalisation (``z_norm``):

- ``unit`` (default, as in the study, which inherits it from pGAN): G normalises *every* input
  code to unit length, ``G(z) = G_net(z / √(‖z‖² + ε))``, with z ~ N(0, I) during training. G is
  therefore invariant to the scale of its input, and the same normalisation is applied to
  encoded codes, so ``G(E(x))`` sees exactly the domain of the prior. E outputs a *raw*
  (unnormalised) vector ẑ = E(x), and the origin-distance score uses the raw norm ‖ẑ‖₂ — as in
  the authors' setup, ‖ẑ‖ is not constrained by the encoder loss (only its direction is), and
  the study reports it empirically as a cue: anomalies map closer to the origin. The ε keeps
  the normalisation finite (and differentiable) for ẑ = 0, a NaN source in the public code.
  (pGAN's own code normalises to norm √N_z rather than 1; with a learnt first linear layer in G
  this is only a re-parametrisation, and the scores use raw E outputs, so it changes nothing.)
- ``none`` (the alternative): plain z ~ N(0, I) fed to G unnormalised; then E must reproduce
  codes of the prior's scale and L_o = −‖ẑ‖/√N_z is ≈ −1 for prior-typical codes.

Why it matters: with ``unit`` the loss is invariant to ‖E(x)‖ (its gradient w.r.t. ẑ is ⊥ ẑ), so
L_o — which dominates the score, since L_n is ~100× smaller — is an *untrained* statistic: the
initial random-feature norm (which tracks the input's contrast/complexity, so its orientation
flips between data sets) plus the implicit growth of steps ⊥ ẑ. With ``none`` the norm is trained
(E must land on the prior's shell for G to reproduce G(z)); ``e_norm: layer`` (``arch: dcgan``)
removes the input's global energy from E's features, so ‖E(x)‖ reflects how well x's features
align with those E learnt on normal-like samples; ``encoder_weight`` 10 lets E reach the prior scale
in a CPU budget. ``e_init_scale`` scales the initial output layer of E (a diagnostic knob).

Scores (higher = more anomalous), with ẑ = E(x), one forward pass of E and G:

- ``joint_ln`` = L_n = (1/N_x)·‖w(x) − w(G(ẑ))‖₂ with the per-image min-max normalisation
  w(X) = (X − min X)/(max X − min X + ε) over all channels and voxels; N_x = C·voxels;
- ``joint_lo`` = L_o = −‖ẑ‖₂/√N_z (smaller norm → higher score);
- ``joint`` = a = λ·L_n + (1−λ)·L_o with λ = ``score_lambda`` (0.05, the paper's value). The
  weights are as in the paper's eq. (5); the authors' public code had them swapped.

Residual map: |x − G(ẑ)|. Validation loss: per-sample mean |x − G(E(x))| on normal validation data.
"""

from __future__ import annotations

import math

import torch

from models.detector import Detector, ScoreOutput
from models.detectors.joint.params import JointParams
from models.nets import blocks
from models.nets.gan_losses import critic_loss, gradient_penalty
from models.registry import DETECTORS, register_2d_3d

EPS = 1e-8



def unit_normalise(z: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """z / √(‖z‖² + ε) per row: unit length, and finite (0) for the zero vector."""
    return z * torch.rsqrt(z.pow(2).sum(1, keepdim=True) + eps)


def minmax(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """w(X) = (X − min X)/(max X − min X + ε), per sample over all channels and voxels."""
    flat = x.flatten(1)
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(x)


def residual_score(x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """L_n = (1/N_x)·‖w(x) − w(rec)‖₂ per sample (N_x = all elements of one sample)."""
    n = x[0].numel()
    return (minmax(x) - minmax(rec)).flatten(1).norm(2, dim=1) / n


def origin_score(z_hat: torch.Tensor) -> torch.Tensor:
    """L_o = −‖ẑ‖₂/√N_z per sample."""
    return -z_hat.norm(2, dim=1) / math.sqrt(z_hat.shape[1])


def combined_score(ln: torch.Tensor, lo: torch.Tensor, lam: float) -> torch.Tensor:
    """a = λ·L_n + (1−λ)·L_o (paper eq. 5; λ weighs the residual term)."""
    return lam * ln + (1.0 - lam) * lo


@register_2d_3d("joint")
class JointEncoderGAN(Detector):
    """WGAN-GP with a jointly trained encoder (Berg et al. 2019)"""


    def __init__(self, params: JointParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        d, ch, st = self.spatial_dims, list(params.channels), list(params.strides)
        self.G = blocks.GeneratorNet(d, params.latent_dim, in_channels, patch_size, ch, st, params.arch, params.g_norm)
        self.D = blocks.CriticNet(d, in_channels, patch_size, ch, st, params.arch, params.d_norm)
        self.E = blocks.EncoderNet(d, in_channels, patch_size, params.latent_dim, ch, st, params.arch, params.e_norm)
        if params.e_init_scale != 1.0:
            head = [m for m in self.E.modules() if isinstance(m, torch.nn.Linear)][-1]
            with torch.no_grad():
                head.weight.mul_(params.e_init_scale)
                if head.bias is not None:
                    head.bias.mul_(params.e_init_scale)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training_step calls so far

    # ------------------------------------------------------------------ networks

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """G(z) in [0, 1]; with ``z_norm: unit`` the code is first normalised to unit length."""
        if self.params.z_norm == "unit":
            z = unit_normalise(z)
        return self.G(z)

    def generator(self):
        return self.generate

    def encoder(self):
        return self.E

    def sample_z(self, n: int, device) -> torch.Tensor:
        """z ~ N(0, I) (normalisation, if any, happens inside :meth:`generate`)."""
        return torch.randn(n, self.params.latent_dim, device=device)

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ẑ = E(x) raw, G(ẑ))."""
        z_hat = self.E(x)
        return z_hat, self.generate(z_hat)

    # ------------------------------------------------------------------ training

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        betas = tuple(self.params.betas)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=lr, betas=betas)
        opt_ge = torch.optim.Adam(list(self.G.parameters()) + list(self.E.parameters()), lr=lr, betas=betas)
        return [opt_d, opt_ge]

    def critic_step(self, x: torch.Tensor, opt: torch.optim.Optimizer, max_grad_norm: float) -> dict[str, float]:
        p = self.params
        with torch.no_grad():
            fake = self.generate(self.sample_z(x.shape[0], x.device))
        gp = gradient_penalty(self.D, x, fake)
        loss, w = critic_loss(self.D(x), self.D(fake), gp, p.lambda_gp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.D.parameters(), max_grad_norm)
        opt.step()
        return {"d_loss": loss.item(), "wasserstein": w, "gp": gp.item()}

    def generator_encoder_loss(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, adversarial −E[D(G(z))], image-space encoder loss E‖G(z) − G(E(G(z)))‖₁ (voxel mean))."""
        fake = self.generate(self.sample_z(n, device))
        adv = -self.D(fake).mean()
        enc = (fake - self.generate(self.E(fake))).abs().flatten(1).mean(1).mean()
        return adv + self.params.encoder_weight * enc, adv, enc

    def generator_step(self, n: int, device, opt: torch.optim.Optimizer, max_grad_norm: float) -> dict[str, float]:
        self.D.requires_grad_(False)
        try:
            loss, adv, enc = self.generator_encoder_loss(n, device)
        finally:
            self.D.requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.G.parameters()) + list(self.E.parameters()), max_grad_norm)
        opt.step()
        return {"g_loss": loss.item(), "g_adv": adv.item(), "enc_loss": enc.item()}

    def training_step(self, x, optimizers, max_grad_norm):
        """Critic step every call; G+E step every ``n_critic`` calls. ``loss`` is the critic loss."""
        opt_d, opt_ge = optimizers
        x = blocks.plain(x)
        out = self.critic_step(x, opt_d, max_grad_norm)
        self.steps += 1
        if int(self.steps) % self.params.n_critic == 0:
            out.update(self.generator_step(x.shape[0], x.device, opt_ge, max_grad_norm))
        return {"loss": out["d_loss"], **out}

    def validation_loss(self, x):
        x = blocks.plain(x)
        _, rec = self.reconstruct(x)
        return (x - rec).abs().flatten(1).mean(1)

    # ------------------------------------------------------------------ scoring

    def score_terms(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Scores and the reconstruction G(ẑ) from one pass of E and G."""
        z_hat, rec = self.reconstruct(x)
        ln, lo = residual_score(x, rec), origin_score(z_hat)
        return {"joint": combined_score(ln, lo, self.params.score_lambda), "joint_ln": ln, "joint_lo": lo}, rec

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = blocks.plain(x)
        scores, rec = self.score_terms(x)
        return ScoreOutput.of(scores, x, rec)


JointEncoderGAN2D, JointEncoderGAN3D = DETECTORS["joint2d"], DETECTORS["joint3d"]
