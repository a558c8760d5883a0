"""Resampling to an isotropic grid with SimpleITK, keeping origin and direction exactly."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

AIR_HU = -1024.0


def isotropic_size(size: tuple[int, ...], spacing: tuple[float, ...], new_spacing: float) -> list[int]:
    """Output size whose samples all lie inside the original sampled extent.

    The extent is (n−1)·spacing between the first and last voxel centres; the new grid starts at
    the same origin and keeps floor(extent / new_spacing) + 1 samples per axis.
    """
    return [int(np.floor((n - 1) * s / new_spacing + 1e-6)) + 1 for n, s in zip(size, spacing)]


def resample_isotropic(image: sitk.Image, spacing_mm: float = 1.0, antialias: bool = False, default_value: float = AIR_HU) -> sitk.Image:
    """Linear resampling to ``spacing_mm`` on every axis; origin and direction are unchanged.

    With ``antialias`` a Gaussian (σ = ½·sqrt(new² − old²) mm) is applied first on axes that are
    downsampled, so thin structures do not alias.
    """
    old = np.asarray(image.GetSpacing(), dtype=float)
    if antialias and np.any(old < spacing_mm):
        sigma = [0.5 * float(np.sqrt(max(spacing_mm**2 - s**2, 0.0))) for s in old]
        # A zero sigma is not accepted by the recursive filter; use a negligible width instead.
        image = sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in sigma])
    size = isotropic_size(image.GetSize(), tuple(old), spacing_mm)
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        [spacing_mm] * image.GetDimension(),
        image.GetDirection(),
        default_value,
        image.GetPixelID(),
    )


def grid_size(shape: tuple[int, ...], spacing: tuple[float, ...], target_mm: float) -> list[int]:
    """Pixels per axis on a ``target_mm`` grid covering the same field of view (edge to edge)."""
    return [max(1, int(round(n * s / target_mm))) for n, s in zip(shape, spacing)]


def resample_to_spacing(image: np.ndarray, spacing: tuple[float, ...], target_mm: float = 1.0, antialias: bool = True) -> np.ndarray:
    """Resample a channel-first image ``(C, *spatial)`` with pixel ``spacing`` (mm per axis) to ``target_mm``.

    For 2D images (X-ray, dermatology, nodule crops) that carry no patient position: the field of
    view is kept edge to edge (MONAI ``Resized``, linear interpolation), and with ``antialias``
    a Gaussian pre-filter is applied on downsampled axes. Returns float32 ``(C, *new_spatial)``.
    """
    from monai.transforms import Resized

    size = grid_size(image.shape[1:], spacing, target_mm)
    if list(image.shape[1:]) == size:
        return np.asarray(image, dtype=np.float32)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    out = Resized("img", spatial_size=size, mode=mode, align_corners=False, anti_aliasing=antialias)(
        {"img": np.asarray(image, dtype=np.float32)})["img"]
    return np.asarray(out, dtype=np.float32)
