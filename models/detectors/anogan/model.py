"""AnoGAN (Schlegl et al. 2017): the WGAN-GP of :mod:`models.nets.wgan_gp` scored by a batched latent search.

See :mod:`models.nets.wgan_gp` for the training, the search and the scores.
"""

from __future__ import annotations

import math

import torch

from models.detector import ScoreOutput
from models.detectors.anogan.params import AnoGANParams
from models.nets import blocks
from models.nets.wgan_gp import WGANGP
from models.registry import DETECTORS, register_2d_3d


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
        f = torch.cat([self.D.features(blocks.plain(train_x[i : i + 256])) for i in chunks])
        mean = sum(blocks.plain(train_x[i : i + 256]).double().sum(0, keepdim=True) for i in chunks) / len(train_x)
        s_res = sum(float((blocks.plain(train_x[i : i + 256]) - mean.float()).abs().flatten(1).sum(1).sum()) for i in chunks) / len(train_x)
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

    def latent_search(self):
        return self.search

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
        x = blocks.plain(x)
        z, scores = self.search(x, generator)
        with torch.no_grad():
            return ScoreOutput.of(scores, x, self.G(z))


AnoGAN2D, AnoGAN3D = DETECTORS["anogan2d"], DETECTORS["anogan3d"]
