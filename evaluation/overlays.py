"""Residual and score heatmaps placed back on the ingested CT grid, written as NIfTI.

Every overlay is built as a SimpleITK image that copies the CT's origin, spacing and direction
(``CopyInformation``), and both are written by the same SimpleITK NIfTI writer, so the overlay's
affine equals the CT's affine exactly and 3D Slicer shows the heatmap on the anatomy.
Where cubes overlap, the maximum is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from preprocessing.nifti import write_nifti


def paint(shape_zyx: tuple[int, int, int], starts_ijk: np.ndarray, blocks_zyx: list[np.ndarray] | np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Max-composite blocks (zyx arrays) at start indices ijk into a ``fill`` volume; clips at edges."""
    vol = np.full(shape_zyx, fill, dtype=np.float32)
    shape = np.asarray(shape_zyx)
    for start, block in zip(np.asarray(starts_ijk, int), blocks_zyx):
        s = start[::-1]
        b = np.asarray(block, dtype=np.float32)
        lo = np.maximum(s, 0)
        hi = np.minimum(s + b.shape, shape)
        if np.any(hi <= lo):
            continue
        dst = tuple(slice(a, c) for a, c in zip(lo, hi))
        src = tuple(slice(a - o, c - o) for a, c, o in zip(lo, hi, s))
        vol[dst] = np.maximum(vol[dst], b[src])
    return vol


def write_overlay(reference: sitk.Image, volume_zyx: np.ndarray, path: Path) -> None:
    """Write ``volume_zyx`` as NIfTI with exactly the geometry of ``reference``."""
    img = sitk.GetImageFromArray(volume_zyx.astype(np.float32))
    img.CopyInformation(reference)
    write_nifti(path, img)


def nodule_mask(shape_zyx: tuple[int, int, int], centres_ijk: np.ndarray, radius_vox: int = 2) -> np.ndarray:
    """Label volume with a small ball (label 1, 2, ... in table order) at each nodule centre voxel."""
    vol = np.zeros(shape_zyx, dtype=np.float32)
    r = radius_vox
    zz, yy, xx = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    ball = zz**2 + yy**2 + xx**2 <= r * r
    for label, (i, j, k) in enumerate(np.asarray(centres_ijk, int), start=1):
        block = np.where(ball, float(label), 0.0)
        sub = paint(shape_zyx, [(i - r, j - r, k - r)], [block])
        vol = np.where(sub > 0, sub, vol)
    return vol
