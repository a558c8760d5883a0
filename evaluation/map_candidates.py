"""Nodule candidates from a voxel anomaly map, as a CAD reader expects them (all arrays zyx, spacing in mm).

- where candidates may lie: the lung region (:func:`preprocessing.lung.lung_region`), the lung itself
  with what lies in it and on its wall, not the map's sweep margin (``map.lung_margin_mm``), so the
  chest wall, the heart and the mediastinum beyond the hilum give no candidates.
- :func:`smooth_map`: the voxel map smoothed with a Gaussian of ``sigma_mm`` (a residual map is
  speckled; a lesion is a blob).
- :func:`peaks`: local maxima inside the region, highest first, at least ``nms_mm`` apart.
- :func:`component_diameter`: a size estimate per candidate, from the map component around it
  thresholded at ``level`` × its peak value (the equivalent-sphere diameter, mm).

:func:`smooth_map`, :func:`peaks`, :func:`component_diameter` and :func:`voxel_candidates` take 2D
(rows, columns) maps as well: the whole-image maps of :mod:`evaluation.image_map`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_map(voxel_zyx: np.ndarray, spacing_zyx, sigma_mm: float) -> np.ndarray:
    """``voxel_zyx`` smoothed with an isotropic Gaussian of ``sigma_mm`` (float32; unchanged when 0)."""
    if sigma_mm <= 0:
        return voxel_zyx.astype(np.float32, copy=False)
    sigma = float(sigma_mm) / np.asarray(spacing_zyx, float)
    return ndimage.gaussian_filter(voxel_zyx.astype(np.float32, copy=False), sigma, mode="nearest")


def peaks(values_zyx: np.ndarray, mask: np.ndarray, spacing_zyx, nms_mm: float, max_n: int) -> np.ndarray:
    """``zyx`` indices of the local maxima of ``values`` inside ``mask``, highest first, each ≥ ``nms_mm`` from
    every higher one kept (greedy non-maximum suppression); at most ``max_n``."""
    values = np.where(mask & np.isfinite(values_zyx), values_zyx, -np.inf)
    spacing = np.asarray(spacing_zyx, float)
    size = np.maximum(1, np.round(nms_mm / spacing).astype(int)) | 1
    local = np.argwhere((values == ndimage.maximum_filter(values, size=size, mode="constant", cval=-np.inf)) & np.isfinite(values))
    local = local[np.argsort(-values[tuple(local.T)], kind="stable")]
    kept = np.zeros((0, values.ndim), int)
    for p in local:
        if not len(kept) or np.min(np.linalg.norm((kept - p) * spacing, axis=1)) >= nms_mm:
            kept = np.vstack([kept, p])
            if len(kept) == max_n:
                break
    return kept


def component_diameter(values_zyx: np.ndarray, peak_zyx, spacing_zyx, level: float, box_mm: float = 80.0) -> float:
    """Equivalent-sphere diameter (mm; equivalent circle for a 2D map) of the connected component of
    ``values ≥ level · values[peak]`` that holds the peak, looked for within a ``box_mm`` box around it
    (a component that fills the box is capped there)."""
    spacing = np.asarray(spacing_zyx, float)
    p = np.asarray(peak_zyx, int)
    half = np.ceil(box_mm / 2 / spacing).astype(int)
    lo, hi = np.maximum(0, p - half), np.minimum(values_zyx.shape, p + half + 1)
    box = values_zyx[tuple(slice(a, b) for a, b in zip(lo, hi))]
    peak_value = float(values_zyx[tuple(p)])
    if not np.isfinite(peak_value) or peak_value <= 0:
        return float("nan")
    labels, _ = ndimage.label(box >= level * peak_value)
    size = float((labels == labels[tuple(p - lo)]).sum()) * float(np.prod(spacing))  # mm³, or mm² in 2D
    if values_zyx.ndim == 2:
        return float(2.0 * np.sqrt(size / np.pi))
    return float((6.0 * size / np.pi) ** (1.0 / 3.0))


def voxel_candidates(voxel_zyx: np.ndarray, region: np.ndarray, spacing_zyx, sigma_mm: float, nms_mm: float, max_n: int,
                     size_level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of a voxel map: (peaks zyx, their smoothed map values, size estimates mm, the smoothed map).

    Peaks whose smoothed value is ≤ 0 (no evidence at all) are dropped.
    """
    smooth = smooth_map(voxel_zyx, spacing_zyx, sigma_mm)
    found = peaks(smooth, region, spacing_zyx, nms_mm, max_n)
    values = smooth[tuple(found.T)] if len(found) else np.zeros(0, np.float32)
    keep = values > 0
    found, values = found[keep], values[keep]
    sizes = np.array([component_diameter(smooth, p, spacing_zyx, size_level) for p in found], float)
    return found, values.astype(float), sizes, smooth


def value_at(values_zyx: np.ndarray, region: np.ndarray, zyx: np.ndarray) -> tuple[float, float, bool]:
    """The map value at voxel ``zyx`` (the maximum within one voxel of it), its percentile among the region's
    voxels (0–100), and whether the voxel lies in the region."""
    p = np.asarray(zyx, int)
    lo, hi = np.maximum(0, p - 1), np.minimum(values_zyx.shape, p + 2)
    v = float(np.nanmax(values_zyx[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]))
    inside = values_zyx[region]
    pct = float(100.0 * np.mean(inside < v)) if inside.size else float("nan")
    return v, pct, bool(region[tuple(p)])
