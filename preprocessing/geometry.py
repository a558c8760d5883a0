"""Coordinate frames: the one place where LPS, RAS, voxel indices and array axes meet.

Conventions used everywhere in the pipeline:
- World coordinates are DICOM patient coordinates, **LPS**, in millimetres.
- A SimpleITK image index is ``ijk`` = (x, y, z) order; ``sitk.GetArrayFromImage`` returns the
  voxels as a ``zyx`` array, so ``array[k, j, i]`` is the voxel at index (i, j, k).
- NIfTI (nibabel, MONAI) uses an affine from ``ijk`` to **RAS**. SimpleITK's NIfTI writer does the
  LPS→RAS flip itself, so a volume written with SimpleITK reads back in nibabel with
  ``ras_affine(image)``; :func:`lps_to_ras` is the same flip for points.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_affine(image: sitk.Image | sitk.ImageFileReader) -> np.ndarray:
    """4×4 affine mapping a voxel index (i, j, k) = (x, y, z) to LPS millimetres (of an image, or of a header read by a reader)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing  # column c = direction[:, c] * spacing[c]
    affine[:3, 3] = image.GetOrigin()
    return affine


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The NIfTI/nibabel affine (index ijk → RAS mm) of ``image``."""
    return LPS_TO_RAS @ lps_affine(image)


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """Flip the first two axes of (..., 3) points: LPS ↔ RAS (the map is its own inverse)."""
    pts = np.array(points, dtype=float)
    pts[..., :2] *= -1.0
    return pts


ras_to_lps = lps_to_ras


def world_to_index(affine_lps: np.ndarray, points_lps: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (i, j, k) of LPS points for an index→LPS affine."""
    pts = np.atleast_2d(np.asarray(points_lps, dtype=float))
    homog = np.c_[pts, np.ones(len(pts))]
    return (np.linalg.inv(affine_lps) @ homog.T).T[:, :3]


def index_to_world(affine_lps: np.ndarray, index_ijk: np.ndarray) -> np.ndarray:
    """LPS points of (continuous) voxel indices (i, j, k) for an index→LPS affine."""
    idx = np.atleast_2d(np.asarray(index_ijk, dtype=float))
    homog = np.c_[idx, np.ones(len(idx))]
    return (affine_lps @ homog.T).T[:, :3]


def pixel_to_lps(position: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray, pixel_spacing: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Pixel coordinates (x = column, y = row) on one DICOM slice → LPS mm (DICOM PS3.3 C.7.6.2.1.1).

    Args:
        position: the slice's ImagePositionPatient (3,), LPS mm.
        row_dir: direction of increasing column index (ImageOrientationPatient[:3]).
        col_dir: direction of increasing row index (ImageOrientationPatient[3:]).
        pixel_spacing: PixelSpacing (between rows, between columns), mm.
        xy: (n, 2) pixel coordinates, column first.
    """
    d_row, d_col = pixel_spacing
    return position + np.outer(xy[:, 0] * d_col, row_dir) + np.outer(xy[:, 1] * d_row, col_dir)


def sub_affine(affine_lps: np.ndarray, start_ijk: np.ndarray) -> np.ndarray:
    """Affine of a sub-block whose voxel (0,0,0) is voxel ``start_ijk`` of the parent."""
    out = affine_lps.copy()
    out[:3, 3] = index_to_world(affine_lps, start_ijk)[0]
    return out
