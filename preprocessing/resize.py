"""Resampling of 2D (and array) images to a millimetre grid with MONAI's ``Resized``.

Images that carry no patient position (X-ray, dermatology, nodule crops) keep their field of view
edge to edge; CT volumes, which do, are resampled with SimpleITK by :mod:`preprocessing.resample`.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import Resized


def grid_size(shape: tuple[int, ...], spacing: tuple[float, ...], target_mm: float) -> list[int]:
    """Pixels per axis on a ``target_mm`` grid covering the same field of view (edge to edge)."""
    return [max(1, int(round(n * s / target_mm))) for n, s in zip(shape, spacing)]


def resample_to_spacing(image: np.ndarray, spacing: tuple[float, ...], target_mm: float = 1.0, antialias: bool = True) -> np.ndarray:
    """Resample a channel-first image ``(C, *spatial)`` with pixel ``spacing`` (mm per axis) to ``target_mm``.

    For 2D images (X-ray, dermatology, nodule crops) that carry no patient position: the field of
    view is kept edge to edge (MONAI ``Resized``, linear interpolation), and with ``antialias``
    a Gaussian pre-filter is applied on downsampled axes. Returns float32 ``(C, *new_spatial)``.
    """
    size = grid_size(image.shape[1:], spacing, target_mm)
    if list(image.shape[1:]) == size:
        return np.asarray(image, dtype=np.float32)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    out = Resized("img", spatial_size=size, mode=mode, align_corners=False, anti_aliasing=antialias)(
        {"img": np.asarray(image, dtype=np.float32)})["img"]
    return np.asarray(out, dtype=np.float32)
