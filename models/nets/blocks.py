"""Network factories from MONAI blocks, shared by the GAN-family detectors (2D and 3D).

- :func:`generator`: MONAI ``Generator`` (latent → start grid → transposed convolutions) followed
  by a sigmoid, because MONAI's Generator has no output activation and our inputs are in [0, 1].
- :class:`CriticNet`: MONAI ``Critic`` (no sigmoid, per-sample instance norm, no dropout — batch
  norm would break the per-sample gradient penalty); ``features`` is the penultimate layer f(x)
  used by AnoGAN/f-AnoGAN feature losses.
- :class:`EncoderNet`: MONAI ``Regressor`` mapping an image to a latent vector; ``features`` is
  its convolutional trunk E_h(x).

``arch: dcgan`` (every factory): :class:`DCGenerator` (linear → norm/ReLU start grid → (transposed)
3×3 convolutions with norm/ReLU → output convolution) and :class:`DCTrunk` (strided 3×3
convolutions with LeakyReLU and optional per-sample norm → a *global* linear head) for the critic
and the encoder. The MONAI versions have one non-linearity in G and E and a patch-averaging critic;
on our data they did not learn (docs/MODELS.md, "GAN repairs"; docs/GAN_DIAGNOSTICS.md).

All shapes: inputs (B, C, *[patch] * dims); latent (B, latent_dim).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Norm
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


def _norm_arg(norm: str):
    """MONAI norm argument: layer norm as one-group group norm (per sample over channels and voxels)."""
    return {"batch": "BATCH", "instance": "INSTANCE", "layer": ("GROUP", {"num_groups": 1}), "none": None}[norm]


def _norm_layer(norm: str, dims: int, channels: int) -> nn.Module:
    if norm == "batch":
        return Norm[Norm.BATCH, dims](channels)
    if norm == "instance":
        return Norm[Norm.INSTANCE, dims](channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class DCGenerator(nn.Module):
    """DCGAN-style G from MONAI ``Convolution`` blocks: z → linear → (norm, ReLU) start grid →
    per stride a (transposed for stride > 1) 3×3 convolution with norm and ReLU → a 3×3 convolution
    to the image channels. Unlike MONAI's ``Generator`` (no activation after its linear layer and
    none after its last up-convolution), every layer but the output is followed by a
    non-linearity. Channels run from ``channels[-1]`` at the start grid down to ``channels[0]``."""

    def __init__(self, dims: int, latent_dim: int, out_channels: int, patch: int, channels: Sequence[int], strides: Sequence[int],
                 norm: str = "batch") -> None:
        super().__init__()
        s = start_size(patch, strides)
        rev = list(channels)[::-1]
        self.start = (rev[0], *([s] * dims))
        self.linear = nn.Linear(latent_dim, math.prod(self.start))
        self.start_norm = _norm_layer(norm, dims, rev[0])
        layers: list[nn.Module] = []
        cin = rev[0]
        for i, st in enumerate(list(strides)[::-1]):
            cout = rev[min(i + 1, len(rev) - 1)]
            layers.append(Convolution(dims, cin, cout, strides=st, kernel_size=3, is_transposed=st > 1, act="RELU", norm=_norm_arg(norm)))
            cin = cout
        layers.append(Convolution(dims, cin, out_channels, strides=1, kernel_size=3, conv_only=True))
        self.conv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.start_norm(self.linear(z).view(-1, *self.start)))
        return self.conv(h)


class DCTrunk(nn.Module):
    """Strided 3×3 convolutions with optional per-sample norm and LeakyReLU(0.2) (MONAI blocks),
    then a linear head on the flattened last feature map (a *global* output, unlike MONAI's
    ``Critic``, whose output is the mean of a 1-channel patch map)."""

    def __init__(self, dims: int, in_channels: int, patch: int, channels: Sequence[int], strides: Sequence[int], out_features: int,
                 norm: str = "none") -> None:
        super().__init__()
        layers, cin, size = [], in_channels, patch
        for c, st in zip(channels, strides):
            layers.append(Convolution(dims, cin, c, strides=st, kernel_size=3, act=("leakyrelu", {"negative_slope": 0.2}), norm=_norm_arg(norm)))
            cin, size = c, size // st
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(cin * size**dims, out_features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class GeneratorNet(nn.Module):
    """G: z (B, L) → image (B, C, *spatial) in [0, 1]. ``arch``: ``monai`` (MONAI ``Generator``,
    instance norm) or ``dcgan`` (:class:`DCGenerator` with norm ``norm``)."""

    def __init__(self, dims: int, latent_dim: int, out_channels: int, patch: int, channels: Sequence[int], strides: Sequence[int],
                 arch: str = "monai", norm: str = "batch") -> None:
        super().__init__()
        if arch == "dcgan":
            self.net = DCGenerator(dims, latent_dim, out_channels, patch, channels, strides, norm)
            return
        s = start_size(patch, strides)
        # MONAI's Generator: channels[i] are the output channels of each up-layer; the last is the image.
        chans = list(channels)[::-1][1:] + [out_channels]
        self.net = Generator(latent_shape=(latent_dim,), start_shape=(channels[-1], *([s] * dims)), channels=chans,
                             strides=list(strides)[::-1], num_res_units=0, norm="INSTANCE", act="PRELU")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))


class CriticNet(nn.Module):
    """D: image → (B,) real-valued critic output; ``features(x)`` → (B, F) penultimate activations.
    ``arch``: ``monai`` (MONAI ``Critic``: instance norm, output = mean of a 1-channel map, i.e. a
    patch critic) or ``dcgan`` (:class:`DCTrunk` with a global linear head, norm ``norm``)."""

    def __init__(self, dims: int, in_channels: int, patch: int, channels: Sequence[int], strides: Sequence[int],
                 arch: str = "monai", norm: str = "none") -> None:
        super().__init__()
        self.dc = arch == "dcgan"
        if self.dc:
            self.net = DCTrunk(dims, in_channels, patch, channels, strides, 1, norm)
            return
        self.net = Critic(in_shape=(in_channels, *([patch] * dims)), channels=list(channels) + [1], strides=list(strides) + [1],
                          num_res_units=0, act=("leakyrelu", {"negative_slope": 0.2}), norm="INSTANCE", dropout=None)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.dc:
            return self.net.features(x)
        return self.net.net[:-1](x).flatten(1)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dc:
            h = self.net.features(x)
            return self.net.head(h).view(-1), h
        h = self.net.net[:-1](x)
        out = self.net.net[-1](h)
        return out.flatten(1).mean(1), h.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


class EncoderNet(nn.Module):
    """E: image → latent (B, L); ``features(x)`` → (B, F) convolutional trunk activations.
    ``arch``: ``monai`` (MONAI ``Regressor``, instance norm; its last convolution has no
    activation) or ``dcgan`` (:class:`DCTrunk`, norm ``norm``, linear head to the latent)."""

    def __init__(self, dims: int, in_channels: int, patch: int, latent_dim: int, channels: Sequence[int], strides: Sequence[int],
                 arch: str = "monai", norm: str = "none") -> None:
        super().__init__()
        self.dc = arch == "dcgan"
        if self.dc:
            self.net = DCTrunk(dims, in_channels, patch, channels, strides, latent_dim, norm)
            return
        self.net = Regressor(in_shape=(in_channels, *([patch] * dims)), out_shape=(latent_dim,), channels=list(channels),
                             strides=list(strides), num_res_units=0, act=("leakyrelu", {"negative_slope": 0.2}), norm="INSTANCE")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x) if self.dc else self.net.net(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
