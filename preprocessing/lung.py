"""The lung region of a chest CT (bool arrays, zyx; spacing in mm): where nodules may lie.

The enclosed-air lung mask (:func:`preprocessing.cubes.lung_mask`) holds the parenchyma but not
what sits in it (vessels, nodules: they are tissue, not air), and not a nodule on the pleura (a
dent in the air). So :func:`lung_region` fills the mask slice by slice (everything the lung
surrounds in an axial slice), closes it with a ball of ``closing_radius_mm`` (a juxtapleural nodule
up to about twice that size fills its dent) and fills it again; the trachea and main bronchi
(:func:`central_airways`) and gas below the diaphragm (:func:`largest_components`) are left out.
The map stage looks for candidates there; the extract stage can draw its normal cubes there
(``extract.background.centres: lung_region``), so training sees the same tissue the map is read on.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from preprocessing.cubes import lung_mask


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for z in range(mask.shape[0]):
        out[z] = ndimage.binary_fill_holes(mask[z])
    return out


def coarsen(mask: np.ndarray, factor: int) -> np.ndarray:
    """``mask`` on a grid ``factor`` times coarser per axis (zero-padded at the far end): a cell is set when any voxel is."""
    shape = np.asarray(mask.shape)
    padded = np.pad(mask, [(0, int(p)) for p in (-shape) % factor])
    z, y, x = (np.asarray(padded.shape) // factor).tolist()
    return padded.reshape(z, factor, y, factor, x, factor).any(axis=(1, 3, 5))


def closing_mm(mask: np.ndarray, spacing_zyx, radius_mm: float, factor: int = 2) -> np.ndarray:
    """Morphological closing of ``mask`` with a ball of ``radius_mm`` (Euclidean distance transforms, mm).

    It runs on a grid ``factor`` times coarser (a coarse cell is set when any of its voxels is), with the
    volume padded by the radius so the border does not erode; the result is upsampled and joined with
    ``mask``, so it always contains the mask. At 1 mm and factor 2 the ball's edge is within ~2 mm.
    """
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    step = np.asarray(spacing_zyx, float) * factor
    pad = int(np.ceil(radius_mm / step.min())) + 1
    coarse = np.pad(coarsen(mask, factor), pad)
    dilated = ndimage.distance_transform_edt(~coarse, sampling=step) <= radius_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=step) > radius_mm
    closed = closed[pad:-pad, pad:-pad, pad:-pad]
    shape = mask.shape
    fine = closed.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)[:shape[0], :shape[1], :shape[2]]
    return fine | mask


def central_airways(lung: np.ndarray, spacing_zyx, head_at_end: bool = True, max_area_mm2: float = 800.0, midline_mm: float = 25.0,
                    wall_mm: float = 3.0) -> np.ndarray:
    """The trachea and main bronchi with their wall (bool, zyx), traced in the enclosed-air mask ``lung``.

    In the head-end slice of the mask, the trachea is the component within ``midline_mm`` of the mask's
    left-right centre and smaller than ``max_area_mm2`` (a trachea is 2-4 cm²). Slice by slice toward the
    feet, every component that overlaps the airway of the slice before and stays that small is airway
    too (the carina splits it into the two main bronchi); tracing stops where a component grows into
    the lung (larger than ``max_area_mm2``). The result is grown by ``wall_mm`` for the airway wall.
    ``head_at_end``: the head is at the last z index (LPS +z, the ingested axial volumes). Empty when no
    such component exists (a scan that starts below the trachea, or whose trachea is not enclosed)."""
    spacing = np.asarray(spacing_zyx, float)
    out = np.zeros_like(lung)
    zs = np.flatnonzero(lung.any(axis=(1, 2)))
    if not len(zs):
        return out
    order = zs[::-1] if head_at_end else zs
    pixel_mm2 = float(spacing[1] * spacing[2])
    centre_x = float(np.nonzero(lung.any(axis=(0, 1)))[0].mean())  # left-right centre of the whole mask (column index)
    labels, n = ndimage.label(lung[order[0]])
    prev = np.zeros(lung.shape[1:], bool)
    for lab in range(1, n + 1):
        comp = labels == lab
        if comp.sum() * pixel_mm2 <= max_area_mm2 and abs(np.nonzero(comp)[1].mean() - centre_x) * spacing[2] <= midline_mm:
            prev |= comp
    for z in order:
        if not prev.any():
            break
        labels, n = ndimage.label(lung[z])
        touching = np.unique(labels[prev & (labels > 0)])
        sizes = np.bincount(labels.ravel(), minlength=n + 1) * pixel_mm2
        keep = [t for t in touching if sizes[t] <= max_area_mm2]
        prev = np.isin(labels, keep) if keep else np.zeros_like(prev)
        out[z] = prev
    if not out.any() or wall_mm <= 0:
        return out
    nz = np.argwhere(out)
    pad = np.ceil(wall_mm / spacing).astype(int) + 1
    lo, hi = np.maximum(0, nz.min(0) - pad), np.minimum(out.shape, nz.max(0) + pad + 1)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))  # the wall lies within wall_mm of the lumen: only that box is transformed
    grown = np.zeros_like(out)
    grown[box] = ndimage.distance_transform_edt(~out[box], sampling=spacing) <= wall_mm
    return grown


def largest_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """The 3D components (26-connected) of ``mask`` at least ``min_fraction`` of the largest one's size.

    The enclosed air holds the lungs (one component, or two when no airway joins them in the scan)
    and gas in the stomach and bowel below the diaphragm, a separate component a few percent of the
    lungs' size; a lung is never a tenth of the other."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = sizes >= min_fraction * sizes.max()
    keep[0] = False
    return keep[labels]


def lung_region(hu_zyx: np.ndarray, spacing_zyx, hu_max: float = -400.0, closing_radius_mm: float = 10.0,
                airways: bool = True, head_at_end: bool = True, min_fraction: float = 0.1) -> np.ndarray:
    """The lungs with what lies in them and on their wall, without the central airways (bool, zyx); see the module docstring."""
    lung = lung_mask(hu_zyx, hu_max)
    if not lung.any():
        return lung
    lung = largest_components(lung, min_fraction)
    filled = _fill_slices(lung)
    region = _fill_slices(closing_mm(filled, spacing_zyx, closing_radius_mm))
    return region & ~central_airways(lung, spacing_zyx, head_at_end) if airways else region


def ct_lung_region(ct: sitk.Image, hu_max: float = -400.0, closing_radius_mm: float = 10.0) -> np.ndarray:
    """:func:`lung_region` of an ingested CT image (HU), with its spacing and head direction (bool, zyx).

    The head is at the last z index when the image's z axis points to LPS +z (the ingested axial volumes)."""
    return lung_region(sitk.GetArrayViewFromImage(ct), tuple(ct.GetSpacing()[::-1]), hu_max, closing_radius_mm,
                       head_at_end=ct.GetDirection()[8] > 0)
