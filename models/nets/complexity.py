"""Input complexity L(x): the lossless PNG size of an image in bits (Serrà et al., ICLR 2020, https://arxiv.org/abs/1909.11480).

Why: generative likelihoods rank simple inputs (few-ink digits, smooth or hazy images) as likely
whatever their class. Serrà et al. correct a model's negative log-likelihood by the length a
generic lossless compressor needs for the same input: S(x) = −log₂ p(x) − L(x). L(x) here is
the size of the PNG (Pillow, maximum compression) of the input quantised to 8 bits in its model
range [0, 1]; channels become the PNG's colour planes (1 → greyscale, 3 → RGB) and the slices of
a 3D patch are stacked vertically into one 2D image. The constant offset between a continuous
density and 8-bit quantisation does not change a ranking.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def png_bits(x: torch.Tensor) -> torch.Tensor:
    """L(x) in bits per sample for a batch (B, C, *spatial) in [0, 1]; returns (B,) float32."""
    a = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    out = np.empty(len(a), np.float32)
    for i, img in enumerate(a):
        c = img.shape[0]
        if c not in (1, 3):  # PNG holds 1 or 3 planes: other channel counts are stacked like slices
            img, c = img.reshape(1, -1, img.shape[-1]), 1
        plane = np.moveaxis(img, 0, -1).reshape(-1, img.shape[-1], c)  # (rows, cols, C): 3D slices stacked
        buf = io.BytesIO()
        Image.fromarray(plane[..., 0] if c == 1 else plane).save(buf, format="PNG", optimize=True)
        out[i] = 8 * len(buf.getvalue())
    return torch.from_numpy(out).to(x.device)
