"""WGAN-GP losses (Gulrajani et al. 2017, https://arxiv.org/abs/1704.00028). MONAI has no gradient penalty, so it is written here.

critic loss = E[D(G(z))] − E[D(x)] + λ_gp · E[(‖∇_x̂ D(x̂)‖₂ − 1)²],  x̂ = εx + (1−ε)G(z), ε ~ U(0,1) per sample
generator loss = −E[D(G(z))]
"""

from __future__ import annotations

from typing import Callable

import torch


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Mean of (‖∇D(x̂)‖₂ − 1)² over interpolates x̂ with one ε ~ U(0,1) per sample."""
    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), generator=generator, device="cpu").to(real)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor, gp: torch.Tensor, lambda_gp: float) -> tuple[torch.Tensor, float]:
    """Critic objective and the Wasserstein estimate E[D(x)] − E[D(G(z))] (for training curves)."""
    w = d_real.mean() - d_fake.mean()
    return -w + lambda_gp * gp, float(w.detach())
