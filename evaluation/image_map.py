"""Whole-image anomaly maps of 2D datasets (radiographs, dermoscopy): the 2D counterpart of :mod:`evaluation.anomaly_map`.

For every image of ``map.split`` (unset: ``evaluate.split``):

1. the image on its whole ingested grid (the ``grids/`` shards, not the centre crop the score
   stage saw) is normalised as the model was trained;
2. MONAI's :func:`~monai.inferers.sliding_window_inference` moves the model's patch over it
   (``map.overlap``, Gaussian blending; an image smaller than the patch is padded by MONAI and the
   map cropped back), scoring ``map.batch_size`` windows at a time through :meth:`Detector.score`
   (images of one shape are swept together). It gives the voxel map (the residual |x − reconstruction|
   averaged over channels, or the map a detector predicts) and the window score spread over each
   window. A detector trained on whole images has one window per image;
3. the window score becomes a p-value under the same score of the normal validation windows
   (:func:`evaluation.anomaly_map.window_calibration`, the CT map's calibration);
4. candidates are the local maxima of the voxel map smoothed by ``map.smooth_mm``, at least
   ``map.nms_mm`` apart, ``map.max_candidates`` per image, highest first, each with a size (the
   equivalent-circle diameter of the map component above ``map.size_level`` × its peak), as in 3D.

Geometry. Each image's map is written as a 2D NIfTI on the image's own ingested grid, beside the
image itself (``maps/<sample>_anomaly.nii.gz``, ``maps/<sample>_image.nii.gz``), with the grid's
pixel spacing: the file's (DICOM Pixel Spacing, the labels CSV's, or ``pixel_spacing_mm``) scaled
by the resampling, in mm; a photograph without a physical pixel size gets the spacing of one
*original* pixel (unit 1), so the map lies exactly on the source file when both are opened in
3D Slicer (which puts a PNG/JPEG at origin 0 with spacing 1). The origin is chosen so that the
grid's pixel edges coincide with the source image's (resampling keeps the field of view edge to
edge): origin = (s_grid − s_source) / 2 per axis. Array axes are (rows, columns); NIfTI/ITK's
x is the column. ``candidates.csv`` gives each candidate's row and column on that grid and its
position in the same frame (``x_mm``, ``y_mm``; ``spacing_known`` tells whether those are mm).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from sklearn.metrics import roc_auc_score

from evaluation.map_candidates import voxel_candidates
from models.batch_scoring import sweep
from models.calibration import p_values
from models.detector import Detector
from pipeline.core import artifacts
from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from preprocessing.grid_shards import parse_shape, read_grid
from preprocessing.intensity import normalise
from preprocessing.nifti import write_nifti

IMAGE_COLUMNS = ("sample_id", "label", "map_max", "window_max", "p_min", "candidates", "spacing_known", "seconds")


def sweep_images(model: Detector, images: np.ndarray, cfg: Config, score: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Slide ``model`` over normalised images of one shape ``(N, C, rows, columns)``.

    Returns the voxel maps and the window-score maps, both ``(N, rows, columns)`` float32, and the
    number of windows scored.
    """
    device = next(model.parameters(), torch.zeros(0)).device
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(device)
    maps, windows = sweep(model, x, cfg.map.mc_samples, cfg.run.seed, cfg.map.batch_size, cfg.map.overlap, mode="gaussian")
    return maps["residual"].mean(1).cpu().numpy(), maps[score][:, 0].cpu().numpy(), windows


def grid_geometry(row: pd.Series, target_mm: float) -> tuple[tuple[float, float], tuple[float, float], bool]:
    """(spacing, origin) of an ingested image's grid, both (rows, columns) in mm, and whether they are
    physical (see the module docstring): the source spacing (or one source pixel) scaled by
    ``orig_shape / grid_shape``; without ``orig_shape`` (array datasets) the grid is ``target_mm``
    when the spacing is known (they were resampled to it), else the source's own."""
    grid = np.asarray(parse_shape(row["grid_shape"]), float)
    text = str(row.get("spacing_mm", "") or "").split()
    known = len(text) > 0
    source = np.asarray([float(v) for v in text], float) if known else np.ones(2)
    source = np.broadcast_to(source, (2,)).astype(float)
    orig = str(row.get("orig_shape", "") or "")
    if orig:
        spacing = source * np.asarray(parse_shape(orig), float) / grid
    else:
        spacing = np.full(2, float(target_mm)) if known else source
    origin = (spacing - source) / 2
    return (float(spacing[0]), float(spacing[1])), (float(origin[0]), float(origin[1])), known


def to_image(array_rc: np.ndarray, spacing_rc, origin_rc) -> sitk.Image:
    """A 2D SimpleITK image of a (rows, columns) array, or of (C, rows, columns) as a vector image, with
    spacing and origin given as (rows, columns): ITK's x is the column."""
    a = np.asarray(array_rc, np.float32)
    if a.ndim == 3 and a.shape[0] > 1:
        img = sitk.GetImageFromArray(np.moveaxis(a, 0, -1), isVector=True)
    else:
        img = sitk.GetImageFromArray(a.reshape(a.shape[-2:]))
    img.SetSpacing((float(spacing_rc[1]), float(spacing_rc[0])))
    img.SetOrigin((float(origin_rc[1]), float(origin_rc[0])))
    return img


def mapped_rows(cfg: Config, run_dir: Path) -> pd.DataFrame:
    """``arrays.csv`` rows of the images to map (``map.split``, else ``evaluate.split``), with their label, in
    arrays order (so each grid shard is read once)."""
    split = cfg.map.split or cfg.evaluate.split
    splits = artifacts.read_splits(run_dir, ["sample_id", "split", "label"])
    chosen = splits[splits["split"] == split][["sample_id", "label"]]
    table = artifacts.read_arrays_table(run_dir).drop(columns=["label"], errors="ignore")
    return table.merge(chosen.astype({"sample_id": str}), on="sample_id", how="inner")


def map_images(model: Detector, cfg: Config, run_dir: Path, norm: dict, score: str, calib: dict | None, result: StageResult) -> dict:
    """Map every chosen image (see the module docstring); writes the NIfTI maps, ``candidates.csv`` and
    ``map_images.csv``; returns the metrics (timing, and how well the maps' peaks separate the labels)."""
    rows = mapped_rows(cfg, run_dir)
    cand_tables, image_rows = [], []
    t_all = time.perf_counter()
    windows = 0
    for _, group in rows.groupby("grid_shape", sort=False):  # images of one shape are swept together
        for start in range(0, len(group), cfg.map.batch_size):
            part = group.iloc[start:start + cfg.map.batch_size]
            t0 = time.perf_counter()
            raw = np.stack([read_grid(run_dir, r) for _, r in part.iterrows()])
            voxel, smap, n = sweep_images(model, normalise(raw, norm), cfg, score)
            windows += n
            per_image = (time.perf_counter() - t0) / len(part)
            for k, (_, r) in enumerate(part.iterrows()):
                cands, summary = _image_outputs(cfg, run_dir, r, raw[k], voxel[k], smap[k], calib, result)
                cand_tables.append(cands)
                image_rows.append(summary | {"seconds": round(per_image + summary.pop("post_seconds"), 4)})
    cands = pd.concat(cand_tables, ignore_index=True) if cand_tables else pd.DataFrame()
    result.outputs.append(artifacts.write_table("candidates", run_dir, cands))
    images = pd.DataFrame(image_rows, columns=list(IMAGE_COLUMNS))
    result.outputs.append(artifacts.write_table("map_images", run_dir, images))
    seconds = time.perf_counter() - t_all
    return {"images": len(images), "windows": windows, "patch": model.patch_size, "seconds": round(seconds, 2),
            "seconds_per_image": round(seconds / max(len(images), 1), 4), "split": cfg.map.split or cfg.evaluate.split,
            "image_auroc": _image_aurocs(images),
            "definitions": {"map_max": "the highest value of the smoothed voxel map in the image",
                            "window_max": "the highest window score of the sweep (the image score when the patch is the image)",
                            "p_min": "the smallest window p-value (normal validation windows)",
                            "image_auroc": "AUROC of map_max and window_max over the mapped images with labels 0/1",
                            "seconds_per_image": "wall time of the whole map stage's image loop over the mapped images"}}


def _image_outputs(cfg: Config, run_dir: Path, row: pd.Series, raw: np.ndarray, voxel: np.ndarray, smap: np.ndarray,
                   calib: dict | None, result: StageResult) -> tuple[pd.DataFrame, dict]:
    """One image: its two NIfTI files, its candidates and its summary row."""
    t0 = time.perf_counter()
    sid = str(row["sample_id"])
    h, w = parse_shape(row["grid_shape"])
    voxel, smap, raw = voxel[:h, :w], smap[:h, :w], raw[:, :h, :w]
    spacing, origin, known = grid_geometry(row, cfg.ingest.spacing_mm)
    for name, arr in (("image_map", voxel), ("image_grid", raw)):
        write_nifti(artifacts.path(name, run_dir, sample=sid), to_image(arr, spacing, origin))
        result.outputs.append(artifacts.path(name, run_dir, sample=sid))
    pmap = p_values(smap.ravel(), calib).reshape(smap.shape) if calib is not None else np.ones_like(smap)
    found, values, sizes, smooth = voxel_candidates(voxel, np.ones(voxel.shape, bool), spacing, cfg.map.smooth_mm, cfg.map.nms_mm,
                                                    cfg.map.max_candidates, cfg.map.size_level)
    r, c = (found[:, 0], found[:, 1]) if len(found) else (np.zeros(0, int), np.zeros(0, int))
    cands = pd.DataFrame({"sample_id": sid, "rank": np.arange(1, len(found) + 1), "row": r, "column": c,
                          "x_mm": origin[1] + c * spacing[1], "y_mm": origin[0] + r * spacing[0], "score": values,
                          "window_score": smap[r, c], "p_value": pmap[r, c], "size_mm": sizes, "spacing_known": known})
    result.ok(f"image {sid}")
    summary = {"sample_id": sid, "label": row["label"], "map_max": float(smooth.max()) if smooth.size else np.nan,
               "window_max": float(np.nanmax(smap)), "p_min": float(np.nanmin(pmap)), "candidates": len(found),
               "spacing_known": known, "post_seconds": time.perf_counter() - t0}
    return cands, summary


def _image_aurocs(images: pd.DataFrame) -> dict:

    lab = pd.to_numeric(images["label"], errors="coerce")
    ok = lab.isin([0, 1])
    if ok.sum() < 2 or lab[ok].nunique() < 2:
        return {}
    return {c: float(roc_auc_score(lab[ok].astype(int), images.loc[ok, c].astype(float))) for c in ("map_max", "window_max")}
