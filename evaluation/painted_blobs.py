"""Label-free selection for whole-scan maps: blobs painted into normal validation tissue, found by the map.

Whether a map's peaks are lesions can be asked, without labelled lesions, only of lesions we place. So
the map stage (``map.selection_blobs`` > 0) paints blobs into the *normal validation* tissue of the
series the model trained on (the ``val`` split's normal cubes: never a training patch), sweeps the
model over the painted volume exactly as over a test scan, and measures how well the candidates
inside the validation region find them: FROC and CPM, every other candidate there being a false one
(normal tissue). This is the "held-out synthetic family on normal validation data" selection rule:
a detector variant or setting can be chosen on it with no test label.

The family (:func:`paint_blobs`): a Gaussian bump max-blended into the CT,
``HU' = max(HU, −1000 + (d + 1000)·exp(−|p − c|² / (2 s²)))`` with ``s = r / 1.5``, the scale ``r``
log-uniform in ``map.selection_radius_mm`` and the peak density ``d`` uniform in
``map.selection_hu``. It is generic (a compact dense blob, as any lesion detector is meant to find),
fixed before any result, and no detector here trains on it: ``synth`` blends masks filled by its
families, this takes the maximum with a smooth profile, so vessels crossing the blob stay intact.

Coordinates: arrays are zyx voxels of the ingested 1 mm volume; the painted blobs' "positions" for the
FROC are voxel indices (mm at 1 mm spacing, scaled by the spacing otherwise).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evaluation.froc import froc


def paint_blobs(hu_zyx: np.ndarray, centres_zyx: np.ndarray, scales_mm: np.ndarray, peaks_hu: np.ndarray,
                spacing_zyx) -> np.ndarray:
    """A float32 copy of ``hu_zyx`` with a Gaussian blob max-blended at each centre (see the module docstring)."""
    out = hu_zyx.astype(np.float32, copy=True)
    spacing = np.asarray(spacing_zyx, float)
    shape = np.asarray(out.shape)
    for c, r, d in zip(np.asarray(centres_zyx, int), scales_mm, peaks_hu):
        sd = float(r) / 1.5
        half = np.ceil(3.5 * sd / spacing).astype(int)
        lo, hi = np.maximum(0, c - half), np.minimum(shape, c + half + 1)
        axes = [(np.arange(a, b) - cc) * sp for a, b, cc, sp in zip(lo, hi, c, spacing)]
        d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        out[box] = np.maximum(out[box], -1000.0 + (float(d) + 1000.0) * np.exp(-0.5 * d2 / sd**2))
    return out


def place_blobs(region: np.ndarray, hu_zyx: np.ndarray, n: int, spacing_zyx, rng: np.random.Generator, min_apart_mm: float = 25.0,
                lung_hu: float = -600.0) -> np.ndarray:
    """Up to ``n`` centres (zyx) drawn uniformly from the lung parenchyma (HU < ``lung_hu``) of ``region``, each at
    least ``min_apart_mm`` from the others."""
    pool = np.argwhere(region & (hu_zyx < lung_hu))
    spacing = np.asarray(spacing_zyx, float)
    chosen: list[np.ndarray] = []
    for i in rng.permutation(len(pool))[: 200 * max(n, 1)]:
        p = pool[i]
        if all(np.linalg.norm((p - q) * spacing) >= min_apart_mm for q in chosen):
            chosen.append(p)
            if len(chosen) == n:
                break
    return np.array(chosen, int).reshape(-1, 3)


def draw_blobs(n: int, radius_mm: tuple[float, float], hu: tuple[float, float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scales (mm, log-uniform in ``radius_mm``) and peak densities (HU, uniform in ``hu``) of ``n`` blobs."""
    scales = np.exp(rng.uniform(np.log(radius_mm[0]), np.log(radius_mm[1]), n))
    return scales, rng.uniform(hu[0], hu[1], n)


def validation_region(centres_zyx: np.ndarray, half_vox: np.ndarray, shape, lung_region: np.ndarray) -> np.ndarray:
    """The lung region within ``half_vox`` (per axis) of any normal validation cube centre: the tissue of the
    validation blocks (with cubes on a grid of step 2·half, their boxes tile the blocks without reaching the training ones)."""
    out = np.zeros(shape, bool)
    for c in np.asarray(centres_zyx, int):
        lo, hi = np.maximum(0, c - half_vox), np.minimum(shape, c + half_vox + 1)
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return out & lung_region


def voxel_mm(zyx: np.ndarray, spacing_zyx) -> dict[str, np.ndarray]:
    """``x_mm``, ``y_mm``, ``z_mm`` of voxel indices (zyx) in the volume's own voxel frame scaled to mm (distances only)."""
    zyx = np.asarray(zyx, float).reshape(-1, 3) * np.asarray(spacing_zyx, float)
    return {"x_mm": zyx[:, 2], "y_mm": zyx[:, 1], "z_mm": zyx[:, 0]}


def blob_froc(candidates: list[pd.DataFrame], blobs: list[pd.DataFrame]) -> dict:
    """FROC sensitivities and CPM of the painted blobs over every validated series (per-series candidate and blob
    tables in voxel-mm coordinates: x_mm, y_mm, z_mm, score / radius_mm), plus the counts."""
    cands = pd.concat(candidates, ignore_index=True) if candidates else pd.DataFrame()
    table = pd.concat(blobs, ignore_index=True) if blobs else pd.DataFrame()
    if not len(table):
        return {}
    out = froc(cands, table, len(blobs), hit_mm=float("nan")) if len(cands) else {}
    return out | {"series": len(blobs), "blobs": int(len(table))}
