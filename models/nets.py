"""Network factories from MONAI blocks, shared by the GAN-family detectors (2D and 3D).

- :func:`generator`: MONAI ``Generator`` (latent → start grid → transposed convolutions) followed
  by a sigmoid, because MONAI's Generator has no output activation and our inputs are in [0, 1].
- :class:`CriticNet`: MONAI ``Critic`` (no sigmoid, per-sample instance norm, no dropout — batch
  norm would break the per-sample gradient penalty); ``features`` is the penultimate layer f(x)
  used by AnoGAN/f-AnoGAN feature losses.
- :class:`EncoderNet`: MONAI ``Regressor`` mapping an image to a latent vector; ``features`` is
  its convolutional trunk E_h(x).

All shapes: inputs (B, C, *[patch] * dims); latent (B, latent_dim).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from monai.networks.nets import Critic, Generator, Regressor
from torch import nn


def plain(x: torch.Tensor) -> torch.Tensor:
    """Drop MONAI's MetaTensor wrapper (keeps the data), so autograd and indexing stay plain torch."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def start_size(patch: int, strides: Sequence[int]) -> int:
    """Spatial size the generator starts from so that its strides reach ``patch`` exactly."""
    prod = math.prod(strides)
    if patch % prod:
        raise ValueError(f"strides {list(strides)} do not divide patch size {patch}")
    return patch // prod


class GeneratorNet(nn.Module):
    """G: z (B, L) → image (B, C, *spatial) in [0, 1]."""

    def __init__(self, dims: int, latent_dim: int, out_channels: int, patch: int, channels: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        s = start_size(patch, strides)
        # MONAI's Generator: channels[i] are the output channels of each up-layer; the last is the image.
        chans = list(channels)[::-1][1:] + [out_channels]
        self.net = Generator(latent_shape=(latent_dim,), start_shape=(channels[-1], *([s] * dims)), channels=chans,
                             strides=list(strides)[::-1], num_res_units=0, norm="INSTANCE", act="PRELU")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))


class CriticNet(nn.Module):
    """D: image → (B,) real-valued critic output; ``features(x)`` → (B, F) penultimate activations."""

    def __init__(self, dims: int, in_channels: int, patch: int, channels: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        self.net = Critic(in_shape=(in_channels, *([patch] * dims)), channels=list(channels) + [1], strides=list(strides) + [1],
                          num_res_units=0, act=("leakyrelu", {"negative_slope": 0.2}), norm="INSTANCE", dropout=None)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.net[:-1](x).flatten(1)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net.net[:-1](x)
        out = self.net.net[-1](h)
        return out.flatten(1).mean(1), h.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


class EncoderNet(nn.Module):
    """E: image → latent (B, L); ``features(x)`` → (B, F) convolutional trunk activations."""

    def __init__(self, dims: int, in_channels: int, patch: int, latent_dim: int, channels: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        self.net = Regressor(in_shape=(in_channels, *([patch] * dims)), out_shape=(latent_dim,), channels=list(channels),
                             strides=list(strides), num_res_units=0, act=("leakyrelu", {"negative_slope": 0.2}), norm="INSTANCE")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.net(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
