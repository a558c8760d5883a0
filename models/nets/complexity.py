"""Input complexity L(x): the lossless PNG size of an image in bits (Serrà et al., ICLR 2020, https://arxiv.org/abs/1909.11480).

Why: generative likelihoods rank simple inputs (few-ink digits, smooth or hazy images) as likely
whatever their class. Serrà et al. correct a model's negative log-likelihood by the length a
generic lossless compressor needs for the same input: S(x) = −log₂ p(x) − L(x). L(x) here is
the size of the PNG (Pillow, maximum compression) of the input quantised to 8 bits in its model
range [0, 1]; channels become the PNG's colour planes (1 → greyscale, 3 → RGB) and the slices of
a 3D patch are stacked vertically into one 2D image. The constant offset between a continuous
density and 8-bit quantisation does not change a ranking.

``jpeg_bits`` is the lossy counterpart (JPEG at a fixed quality of 75, Pillow): the "JPEG file
size" baseline of radiograph studies, computed from the model input rather than from the source
file, so it is the same for DICOM, PNG and JPEG inputs and does not depend on how the source was
saved. ``lo``/``hi`` give the value range quantised to 0-255 (default the model range [0, 1];
z-scored data need a wider one, e.g. [-3, 3]).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def compressed_bits(x: torch.Tensor, fmt: str = "PNG", lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Size in bits of each sample of a batch (B, C, *spatial) saved as ``fmt`` (PNG or JPEG); (B,) float32.

    Values are mapped from [lo, hi] to 8 bits (clamped).
    """
    a = ((x.detach().float() - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    opts = {"optimize": True} if fmt == "PNG" else {"quality": 75}
    out = np.empty(len(a), np.float32)
    for i, img in enumerate(a):
        c = img.shape[0]
        if c not in (1, 3):  # PNG and JPEG hold 1 or 3 planes: other channel counts are stacked like slices
            img, c = img.reshape(1, -1, img.shape[-1]), 1
        plane = np.moveaxis(img, 0, -1).reshape(-1, img.shape[-1], c)  # (rows, cols, C): 3D slices stacked
        buf = io.BytesIO()
        Image.fromarray(plane[..., 0] if c == 1 else plane).save(buf, format=fmt, **opts)
        out[i] = 8 * len(buf.getvalue())
    return torch.from_numpy(out).to(x.device)


def png_bits(x: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """L(x) in bits per sample for a batch (B, C, *spatial) in [lo, hi]; returns (B,) float32."""
    return compressed_bits(x, "PNG", lo, hi)


def jpeg_bits(x: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """JPEG (quality 75) size in bits per sample for a batch (B, C, *spatial) in [lo, hi]; (B,) float32."""
    return compressed_bits(x, "JPEG", lo, hi)
