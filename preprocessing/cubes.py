"""Cube cutting, lung mask and background-cube sampling on ingested 1 mm volumes.

Arrays here are ``zyx`` (SimpleITK's array order); indices and centres are ``ijk`` = (x, y, z)
voxel indices of the volume, matching :mod:`preprocessing.geometry`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.core.errors import ExtractionError


def centre_offset(size: int, patch: int) -> int:
    """Index of the centre patch's first voxel inside a ``size`` cube (MONAI's centre-crop rule)."""
    return (size - patch) // 2


def centre_patch(x: np.ndarray, patch: int) -> np.ndarray:
    """Centre ``patch``-sized crop of (N, C, *spatial) arrays (a view); the crop of scoring and validation, MONAI's centre-crop rule."""
    o = [centre_offset(n, patch) for n in x.shape[2:]]
    return x[(slice(None), slice(None), *[slice(a, a + patch) for a in o])]


def cube_start(center_ijk: np.ndarray, size: int) -> np.ndarray:
    """Index of a cube's first voxel so that ``center_ijk`` is voxel ``size // 2`` of the cube."""
    return np.asarray(center_ijk, dtype=int) - size // 2


def cut_cube(volume_zyx: np.ndarray, start_ijk: np.ndarray, size: int, pad_value: float) -> tuple[np.ndarray, bool]:
    """Cut a ``size``³ cube starting at ``start_ijk``; outside the volume is filled with ``pad_value``.

    Returns ``(cube_zyx, padded)``; ``padded`` is True exactly when the cube leaves the volume.
    Raises :class:`ExtractionError` when the cube does not overlap the volume at all.
    """
    start_zyx = np.asarray(start_ijk, dtype=int)[::-1]
    shape = np.asarray(volume_zyx.shape)
    lo = np.maximum(start_zyx, 0)
    hi = np.minimum(start_zyx + size, shape)
    if np.any(hi <= lo):
        raise ExtractionError(f"cube at index {tuple(int(v) for v in start_ijk)} does not overlap the volume "
                              f"of shape (x,y,z)={tuple(int(v) for v in shape[::-1])}")
    padded = bool(np.any(start_zyx < 0) or np.any(start_zyx + size > shape))
    if not padded:
        z, y, x = start_zyx
        return volume_zyx[z : z + size, y : y + size, x : x + size].copy(), False
    cube = np.full((size, size, size), pad_value, dtype=volume_zyx.dtype)
    src = tuple(slice(a, b) for a, b in zip(lo, hi))
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start_zyx))
    cube[dst] = volume_zyx[src]
    return cube, True


def lung_mask(volume_zyx: np.ndarray, hu_max: float = -400.0) -> np.ndarray:
    """Air-like voxels enclosed by the body: lungs (and airways).

    Voxels below ``hu_max`` that are connected (3D, 6-connectivity) to the in-plane border of
    the volume are outside air and are removed; enclosed components larger than 1% of the
    largest are kept.
    """
    air = volume_zyx < hu_max
    labels, n = ndimage.label(air)
    if n == 0:
        return np.zeros_like(air)
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    sizes[border] = 0
    if sizes.max() == 0:
        return np.zeros_like(air)
    keep = sizes >= 0.01 * sizes.max()
    keep[0] = False
    return keep[labels]


def _box_sums(mask_zyx: np.ndarray, starts_zyx: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``mask`` over size³ boxes starting at ``starts_zyx`` (summed-area table, O(1) each)."""
    s = np.zeros(np.asarray(mask_zyx.shape) + 1, dtype=np.int64)
    s[1:, 1:, 1:] = mask_zyx.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
    z0, y0, x0 = starts_zyx.T
    z1, y1, x1 = z0 + size, y0 + size, x0 + size
    return (
        s[z1, y1, x1] - s[z0, y1, x1] - s[z1, y0, x1] - s[z1, y1, x0]
        + s[z0, y0, x1] + s[z0, y1, x0] + s[z1, y0, x0] - s[z0, y0, x0]
    )


def background_starts(volume_zyx: np.ndarray, size: int, stride: int, avoid_ijk: np.ndarray, min_distance_vox: float,
                      lung_fraction: float, hu_max: float, max_cubes: int, rng: np.random.Generator,
                      region: np.ndarray | None = None) -> np.ndarray:
    """Start indices (ijk) of background cubes: fully inside the volume, mostly lung (or, with a bool ``region``
    (zyx), centred in it), away from nodules.

    ``avoid_ijk`` are nodule centres; a candidate is kept when the Chebyshev distance from its
    centre to every nodule centre is at least ``min_distance_vox``.
    """
    shape = np.asarray(volume_zyx.shape)
    if np.any(shape < size):
        return np.zeros((0, 3), dtype=int)
    axes = [np.arange(0, n - size + 1, stride) for n in shape]
    starts_zyx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    if region is not None:
        starts_zyx = starts_zyx[region[tuple((starts_zyx + size // 2).T)]]
    else:
        frac = _box_sums(lung_mask(volume_zyx, hu_max), starts_zyx, size) / size**3
        starts_zyx = starts_zyx[frac >= lung_fraction]
    starts_ijk = starts_zyx[:, ::-1]
    if len(avoid_ijk) and len(starts_ijk):
        centres = starts_ijk + size // 2
        dist = np.abs(centres[:, None, :] - np.asarray(avoid_ijk)[None, :, :]).max(-1).min(1)
        starts_ijk = starts_ijk[dist >= min_distance_vox]
    if len(starts_ijk) > max_cubes:
        starts_ijk = starts_ijk[np.sort(rng.choice(len(starts_ijk), max_cubes, replace=False))]
    return starts_ijk.astype(int)
