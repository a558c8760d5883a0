"""WGAN-GP detectors: AnoGAN latent search and f-AnoGAN, 2D and 3D.

Papers: WGAN-GP, Gulrajani et al. 2017 (https://arxiv.org/abs/1704.00028); AnoGAN, Schlegl et al. 2017
(https://arxiv.org/abs/1703.05921); f-AnoGAN, Schlegl et al. 2019 (https://doi.org/10.1016/j.media.2019.01.010);
restarts as in ADGAN, Deecke et al. 2018 (https://arxiv.org/abs/1812.02288). Used on 3D nodule cubes by Santos Buitrago et al. 2018.

Networks from :mod:`models.nets` (MONAI blocks): generator G (sigmoid output in [0, 1]) and critic
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

import math

import torch

from models import nets
from models.catalog import AnoGANParams, FAnoGANParams, WGANParams
from models.gan_losses import critic_loss, gradient_penalty
from models.registry import Detector, ScoreOutput, register_2d_3d


class WGANGP(Detector):
    """WGAN-GP generator and critic with the shared training loop."""


    def __init__(self, params: WGANParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        d = self.spatial_dims
        self.G = nets.GeneratorNet(d, params.latent_dim, in_channels, patch_size, params.channels, params.strides, params.arch, params.g_norm)
        self.D = nets.CriticNet(d, in_channels, patch_size, params.channels, params.strides, params.arch, params.d_norm)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def sample_z(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (n, self.params.latent_dim)
        if self.params.latent_prior == "uniform":
            return (torch.rand(shape, generator=generator) * 2 - 1).to(device)
        return torch.randn(shape, generator=generator).to(device)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        b = tuple(self.params.betas)
        return [torch.optim.Adam(self.G.parameters(), lr=lr, betas=b), torch.optim.Adam(self.D.parameters(), lr=lr, betas=b)]

    def gan_step(self, x: torch.Tensor, opt_g, opt_d, max_grad_norm: float) -> dict[str, float]:
        x = nets.plain(x)
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
        x = nets.plain(x)
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


@register_2d_3d("anogan")
class AnoGAN(WGANGP):
    """WGAN-GP with AnoGAN's batched latent-search score"""


    def __init__(self, params: AnoGANParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        # typical size of each search term on the normal training images (1 = unnormalised)
        self.register_buffer("term_scale", torch.ones(2))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # model folders written before search_normalise existed have no term_scale: unnormalised terms, as they were scored
        state_dict.setdefault(prefix + "term_scale", torch.ones(2))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit_after_training(self, train_x: torch.Tensor) -> dict[str, float]:
        """With ``search_normalise``: the typical size of each term of L(z) on the normal training
        images, s_res = mean Σ|x − x̄| and s_feat = mean Σ|f(x) − f̄| (x̄, f̄: the training means), so
        that L(z) = (1−λ)·Σ|x − G(z)|/s_res + λ·Σ|f(x) − f(G(z))|/s_feat weighs the two terms in units
        of normal variation. Without it the feature term's scale is whatever the critic's features
        happen to be (it drifts with the Wasserstein estimate during training)."""
        if not self.params.search_normalise:
            self.term_scale.fill_(1.0)
            return {}
        was = self.training
        self.eval()
        # train_x is read in slices (the train stage passes a stand-in that reads the cubes when sliced: Detector.fit_after_training)
        chunks = range(0, len(train_x), 256)
        f = torch.cat([self.D.features(nets.plain(train_x[i : i + 256])) for i in chunks])
        mean = sum(nets.plain(train_x[i : i + 256]).double().sum(0, keepdim=True) for i in chunks) / len(train_x)
        s_res = sum(float((nets.plain(train_x[i : i + 256]) - mean.float()).abs().flatten(1).sum(1).sum()) for i in chunks) / len(train_x)
        s_res = torch.tensor(s_res, dtype=f.dtype, device=f.device)
        s_feat = (f - f.mean(0, keepdim=True)).abs().sum(1).mean()
        self.term_scale.copy_(torch.stack([s_res, s_feat]).clamp_min(1e-8))
        self.train(was)
        return {"search_scale_residual": float(s_res), "search_scale_feature": float(s_feat)}

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """z mapped back into the prior's support: clamped to [-1, 1] (uniform prior), or scaled down
        to the 99.9 % quantile of ‖z‖ under N(0, I) (χ distribution, Wilson-Hilferty) if longer. Without
        this the search drifts to codes the generator never saw in training (‖z‖ ≈ 1.4-1.7·√N_z after
        100-300 Adam steps on MNIST-9), where G draws strokes of any class, anomalies included."""
        if self.params.latent_prior == "uniform":
            return z.clamp(-1.0, 1.0)
        n = z.shape[1]
        r = math.sqrt(n * (1 - 2 / (9 * n) + 3.09 * math.sqrt(2 / (9 * n))) ** 3)
        norm = z.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return z * torch.clamp(r / norm, max=1.0)

    def search(self, x: torch.Tensor, generator: torch.Generator, trace: list[float] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Batched latent search; returns the best z per query and its loss terms (each (B,)).
        ``trace``, if given, receives the mean loss over queries and restarts before each step."""
        p = self.params
        b, r = len(x), p.restarts
        frozen = [q.requires_grad for q in self.parameters()]
        self.requires_grad_(False)
        try:
            with torch.no_grad():
                fx = self.D.features(x)
            # (R, L), shared by every query; drawn one code at a time so that restart k is the same
            # code whatever R is (torch's vectorised sampler depends on the tensor size)
            z0 = torch.cat([self.sample_z(1, x.device, generator) for _ in range(r)])
            z = z0[:, None, :].expand(r, b, -1).reshape(r * b, -1).clone().requires_grad_(True)
            xr = x.repeat(r, *[1] * (x.dim() - 1))
            fxr = fx.repeat(r, 1)
            opt = torch.optim.Adam([z], lr=p.search_lr) if p.search_optimizer == "adam" else torch.optim.SGD([z], lr=p.search_lr, momentum=0.9)
            s_res, s_feat = self.term_scale

            def terms(zz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                g = self.G(zz)
                return (xr - g).abs().flatten(1).sum(1) / s_res, (fxr - self.D.features(g)).abs().sum(1) / s_feat

            with torch.enable_grad():
                for _ in range(p.search_steps):
                    res, feat = terms(z)
                    loss = ((1 - p.search_lambda) * res + p.search_lambda * feat).sum()  # a sum: per-sample gradients stay independent
                    if trace is not None:
                        trace.append(float(loss.detach()) / (r * b))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if p.search_project:
                        with torch.no_grad():
                            z.copy_(self.project(z))
            with torch.no_grad():
                res, feat = terms(z)
                total = (1 - p.search_lambda) * res + p.search_lambda * feat
                best = total.view(r, b).argmin(0)
                pick = best * b + torch.arange(b, device=x.device)
        finally:
            for q, flag in zip(self.parameters(), frozen):
                q.requires_grad_(flag)
        return z.detach()[pick], {"anogan": total[pick], "residual": res[pick], "feature": feat[pick]}

    def score(self, x, mc_samples, generator):
        x = nets.plain(x)
        z, scores = self.search(x, generator)
        with torch.no_grad():
            return ScoreOutput.of(scores, x, self.G(z))


@register_2d_3d("fanogan")
class FAnoGAN(WGANGP):
    """WGAN-GP followed by an izi_f encoder (f-AnoGAN)"""


    def __init__(self, params: FAnoGANParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        self.E = nets.EncoderNet(self.spatial_dims, in_channels, patch_size, params.latent_dim, params.channels, params.strides,
                                 params.arch, params.d_norm)
        self.register_buffer("encoder_phase", torch.zeros((), dtype=torch.bool))

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
        x = nets.plain(x)
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
        rec, feat, _ = self.izi_f(nets.plain(x))
        return rec + self.params.kappa * feat

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = nets.plain(x)
        rec, feat, g = self.izi_f(x)
        return ScoreOutput.of({"fanogan": rec + self.params.kappa * feat, "residual": rec, "feature": feat}, x, g)
