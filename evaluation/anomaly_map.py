"""Whole-scan anomaly maps: the trained detector swept over the lung, candidates, and their evaluation.

For every ingested CT series:

1. the volume is normalised as the model was trained, the lung mask (:func:`preprocessing.cubes.lung_mask`)
   is dilated by ``map.lung_margin_mm``, and the volume is cropped to it;
2. MONAI's :func:`~monai.inferers.sliding_window_inference` moves the model's patch over the crop
   (``map.overlap``, Gaussian blending). A window that does not meet the dilated mask is never
   scored (it is counted); the others go through :meth:`Detector.score` in batches, giving two maps:
   the detector's voxel map (the residual |x − reconstruction|, or the map a detector predicts) and
   the window score spread over the window;
3. the window score becomes a p-value under the same score of the normal validation windows
   (the centre patches of the ``val`` normals, scored with the same settings), so ``p < 0.05``
   is a threshold with a meaning;
4. candidates (:mod:`evaluation.map_candidates`) are, by default (``map.candidates: voxel``), the
   local maxima of the voxel map smoothed by ``map.smooth_mm``, inside the lung region itself (the
   lung mask filled and closed by ``map.lung_closing_mm``, not the sweep's margin), at least
   ``map.nms_mm`` apart, highest first (``map.max_candidates`` per series), each with a size estimate
   (the map component above ``map.size_level`` × its peak). ``map.candidates: window`` keeps the
   older local maxima of the window-score map inside the dilated mask.

Each map is written on the CT's own grid (``CopyInformation``): its affine equals the CT's. The
annotated nodules (the nodule table, LPS mm) are then found among the candidates: a candidate hits
a nodule within its radius (``diameter_mm`` / 2) or ``map.hit_mm`` when the table has none. Per
nodule: the rank and distance of the nearest candidate, and the map's value at its centre (and
its percentile in the lung region) beside its malignancy rating; pooled and per scan: FROC
sensitivities at 1/8 … 8 false candidates per scan and their mean, the CPM
(:mod:`evaluation.froc`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from evaluation.froc import FP_RATES, candidate_hits, froc, froc_per_scan, nodule_hits, rate_key
from evaluation.image_map import map_images
from evaluation.map_candidates import peaks, value_at, voxel_candidates
from evaluation.painted_blobs import blob_froc, draw_blobs, paint_blobs, place_blobs, validation_region, voxel_mm
from models.batch_scoring import score_array
from models.calibration import check_calibration, fit_calibration, p_values
from models.checkpoint import device_for, load_checkpoint
from models.detector import Detector
from models.model_folder import ModelFileError, model_folder
from pipeline.core import artifacts, io
from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from preprocessing.cube_store import SampleCubes
from preprocessing.cubes import lung_mask
from preprocessing.geometry import index_to_world, lps_affine, world_to_index
from preprocessing.intensity import normalise
from preprocessing.lung import coarsen, ct_lung_region
from preprocessing.nifti import write_nifti
from preprocessing.nodules import read_nodules

MARKUPS_SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"


@dataclass
class SeriesMap:
    """The maps of one series on the CT grid (zyx arrays) and what the sweep did."""

    voxel: np.ndarray  # float32 voxel map (0 outside the mask)
    score: np.ndarray  # float32 window-score map (NaN outside the mask)
    mask: np.ndarray  # bool: the dilated lung mask
    windows: int  # windows of the sweep
    skipped: int  # windows outside the mask, never scored
    seconds: float


def sweep(model: Detector, hu_zyx: np.ndarray, spacing_zyx: tuple[float, float, float], norm: dict, cfg: Config, score: str) -> SeriesMap:
    """Slide ``model`` over the lung of one CT (HU, zyx); see the module docstring."""
    t0 = time.perf_counter()
    mask = _dilated_lung(hu_zyx, spacing_zyx, cfg)
    shape, patch = np.asarray(hu_zyx.shape), model.patch_size
    voxel, smap = np.zeros(shape, np.float32), np.full(shape, np.nan, np.float32)
    if not mask.any():
        return SeriesMap(voxel, smap, mask, 0, 0, time.perf_counter() - t0)
    lo, hi = _bbox(mask, patch, shape)
    crop = normalise(hu_zyx[None, None, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], norm)
    sub = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    counter = {"windows": 0, "skipped": 0}
    gen_seed = cfg.run.seed

    def predictor(windows: torch.Tensor, coords) -> dict[str, torch.Tensor]:
        inside = np.array([sub[tuple(c[2:])].any() for c in coords])
        counter["windows"] += len(inside)
        counter["skipped"] += int((~inside).sum())
        out_voxel = torch.zeros((len(inside), 1, *windows.shape[2:]))
        out_score = torch.zeros_like(out_voxel)
        if inside.any():
            x = windows[torch.from_numpy(inside)].numpy()
            scores, residual, _ = score_array(model, x, cfg.map.mc_samples, len(x), gen_seed, windows.device)
            idx = torch.from_numpy(np.flatnonzero(inside))
            out_voxel[idx] = torch.from_numpy(residual.astype(np.float32)).mean(1, keepdim=True)
            values = torch.from_numpy(scores[score].astype(np.float32)).view(-1, 1, *[1] * (windows.dim() - 2))
            out_score[idx] = values.expand(-1, 1, *windows.shape[2:])
        return {"voxel": out_voxel, "score": out_score}

    out = sliding_window_inference(torch.from_numpy(crop), [patch] * 3, cfg.map.batch_size, predictor, overlap=cfg.map.overlap,
                                   mode="gaussian", with_coord=True)
    region = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    voxel[region] = np.where(sub, out["voxel"][0, 0].numpy(), 0.0)
    smap[region] = np.where(sub, out["score"][0, 0].numpy(), np.nan)
    return SeriesMap(voxel, smap, mask, counter["windows"], counter["skipped"], time.perf_counter() - t0)


def _dilated_lung(hu_zyx: np.ndarray, spacing_zyx, cfg: Config, factor: int = 2) -> np.ndarray:
    """The lung mask grown by at least ``map.lung_margin_mm`` (Euclidean, in mm).

    The distance transform runs on a grid ``factor`` times coarser (a coarse cell is lung when any
    of its voxels is), which is 8× cheaper for factor 2 (28 s → under 4 s on a 400×400×331 CT). The
    threshold is widened by the largest rounding this can cause, (factor − 1)·√3·spacing, so the
    result always contains the exact dilation: no window that meets the lung within the margin is
    ever skipped; the margin is at most twice that much wider (3.5 mm at 1 mm spacing).
    """
    lung = lung_mask(hu_zyx, cfg.extract.background.lung_hu_max)
    if not lung.any() or cfg.map.lung_margin_mm <= 0:
        return lung
    shape = np.asarray(lung.shape)
    coarse = coarsen(lung, factor)
    slack = (factor - 1) * np.sqrt(3) * float(max(spacing_zyx))
    near = ndimage.distance_transform_edt(~coarse, sampling=np.asarray(spacing_zyx, float) * factor) <= cfg.map.lung_margin_mm + slack
    fine = near.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)[:shape[0], :shape[1], :shape[2]]
    return fine | lung


def _bbox(mask: np.ndarray, patch: int, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of the mask, widened to at least one window where the volume allows."""
    nz = np.argwhere(mask)
    lo, hi = nz.min(0), nz.max(0) + 1
    grow = np.maximum(0, patch - (hi - lo))
    lo = np.maximum(0, lo - grow // 2)
    hi = np.minimum(shape, np.maximum(hi, lo + patch))
    return lo, hi


def window_calibration(model: Detector, run_dir: Path, norm: dict, cfg: Config, score: str) -> dict | None:
    """The window score's null distribution: the normal validation centre patches, scored as the windows are."""
    splits = artifacts.read_splits(run_dir, ["sample_id", "split", "label"])
    normal_val = splits.loc[(splits["split"] == "val") & (splits["label"] == 0), "sample_id"]
    if len(normal_val) < 5:
        return None
    samples = artifacts.read_samples(run_dir, ["sample_id", *artifacts.SHARD_COLUMNS])
    x = SampleCubes(run_dir, samples[np.isin(samples["sample_id"].to_numpy(str), normal_val.to_numpy(str))], norm, model.patch_size)
    device = next(model.parameters(), torch.zeros(0)).device
    scores, _, _ = score_array(model, x, cfg.map.mc_samples, cfg.map.batch_size, cfg.run.seed, device)
    calib = fit_calibration(scores[score], cfg.score.threshold, cfg.score.fpr, cfg.score.bh)
    # how far the map's Monte-Carlo samples are from the score stage's: the rank correlation of the two on these windows
    full = scores[score]
    if cfg.score.mc_samples != cfg.map.mc_samples:
        full = score_array(model, x, cfg.score.mc_samples, cfg.map.batch_size, cfg.run.seed, device)[0][score]
    rho = float(pd.Series(scores[score]).corr(pd.Series(full), method="spearman"))
    return calib | {"score": score, "mc_samples": cfg.map.mc_samples, "patch": model.patch_size,
                    "spearman_vs_score_mc_samples": rho, "score_mc_samples": cfg.score.mc_samples}


def markups(points: pd.DataFrame, name: str) -> dict:
    """One Slicer point list (markups JSON, LPS mm) of candidates: label = rank, description = score and p-value."""
    control = [{"id": str(int(r["rank"])), "label": f"c{int(r['rank'])}", "description": f"score {r['score']:.6g}, p {r['p_value']:.3g}",
                "associatedNodeID": "", "position": [float(r["x_mm"]), float(r["y_mm"]), float(r["z_mm"])],
                "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0], "selected": True, "locked": True,
                "visibility": True, "positionStatus": "defined"} for _, r in points.iterrows()]
    return {"type": "Fiducial", "name": name, "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": True,
            "labelFormat": "%N-%d", "controlPoints": control}


def write_markups(path: Path, lists: list[dict]) -> None:
    """A ``.mrk.json`` file holding the point lists (Slicer's markups schema v1.0.3)."""
    io.write_text(path, json.dumps({"@schema": MARKUPS_SCHEMA, "markups": lists}, indent=1) + "\n")


def _nodules(cfg: Config, run_dir: Path, series: pd.DataFrame) -> pd.DataFrame:
    """The annotated nodules of the mapped series (LPS mm, radius when the table gives a diameter; diameter and
    malignancy_median kept when the table has them)."""
    if cfg.ingest.format != "dicom" or not Path(cfg.extract.nodules).exists():
        return pd.DataFrame(columns=["series_uid", "nodule_id", "x_mm", "y_mm", "z_mm", "radius_mm"])
    table = read_nodules(cfg.extract.nodules, series)[0]
    table["radius_mm"] = pd.to_numeric(table["diameter_mm"], errors="coerce") / 2 if "diameter_mm" in table.columns else np.nan
    inside = np.zeros(len(table), bool)
    for uid, rows in table.groupby("series_uid").indices.items():
        inside[rows] = _inside_volume(run_dir, uid, table.iloc[rows][["x_mm", "y_mm", "z_mm"]].to_numpy(float))
    extra = [c for c in ("diameter_mm", "malignancy_median") if c in table.columns]
    return table[inside][["series_uid", "nodule_id", "x_mm", "y_mm", "z_mm", "radius_mm", *extra]].reset_index(drop=True)


def _inside_volume(run_dir: Path, uid: str, lps_mm: np.ndarray) -> np.ndarray:
    """Which LPS points (n, 3; mm) fall inside the ingested volume of their series (its header only, read once;
    the extract stage reports the others)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(artifacts.path("volume", run_dir, series=uid)))
    reader.ReadImageInformation()
    ijk = np.rint(world_to_index(lps_affine(reader), lps_mm)).astype(int)  # the reader has the image's origin, spacing, direction
    return np.all((ijk >= 0) & (ijk < np.array(reader.GetSize())), axis=1)


def series_of_split(run_dir: Path, split: str) -> set[str]:
    """The series that belong to ``split`` alone: some cube in it and no *normal* cube elsewhere.

    With a split grouped by patient (e.g. leave one series out), these are the held-out scans; a
    series whose background cubes trained the model is never among them, even though its nodule
    cubes sit in the test split."""
    samples = artifacts.read_samples(run_dir, ["sample_id", "series_uid"])
    table = samples.merge(artifacts.read_splits(run_dir, ["sample_id", "split", "label"]), on="sample_id")
    elsewhere = set(table.loc[(table["label"] == 0) & (table["split"] != split), "series_uid"])
    return set(table.loc[table["split"] == split, "series_uid"]) - elsewhere


def map_run(cfg: Config, run_dir: Path) -> StageResult:
    """The map stage: every ingested series → maps, candidates, markups; calibration and metrics (see the module
    docstring); with ``map.split``, only the series of that split (:func:`series_of_split`). 2D datasets: every
    image of ``map.split`` → its whole-image map (:mod:`evaluation.image_map`)."""
    result = StageResult()
    if not cfg.map.enabled:
        return result
    torch.set_num_threads(cfg.run.threads)
    folder = model_folder(cfg, run_dir)
    model, payload = load_checkpoint(folder, device_for(cfg.run.device))
    if cfg.ingest.format != "dicom" and model.spatial_dims != 2:
        return result  # 3D array datasets: cubes without a scan to map
    score = cfg.map.score or cfg.evaluate.score
    calib = _calibration(model, cfg, run_dir, folder, payload["normalisation"], score)
    if cfg.ingest.format != "dicom":
        metrics = map_images(model, cfg, run_dir, payload["normalisation"], score, calib, result)
        metrics |= {"score": score, "calibrated": calib is not None, "kind": "images"}
        result.outputs.append(artifacts.write_json("map_metrics", run_dir, metrics))
        result.counts = {"images": metrics["images"], "windows": metrics["windows"]}
        result.extra = {"seconds_per_image": metrics["seconds_per_image"], **metrics["image_auroc"]}
        return result
    series = artifacts.read_series(run_dir)
    if cfg.map.split is not None:
        series = series[series["series_uid"].astype(str).isin(series_of_split(run_dir, cfg.map.split))]
    nodules = _nodules(cfg, run_dir, series)
    tables, lists, values = [], [], []
    for _, s in series.iterrows():
        table, stats, at_nodules = _map_series(model, cfg, run_dir, s["series_uid"], payload["normalisation"], score, calib, nodules, result)
        tables.append(table)
        values += at_nodules
        lists.append(markups(table, artifacts.series_stem(s["series_uid"])))
        result.counts[f"windows_{artifacts.series_stem(s['series_uid'])}"] = stats
    cands = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    result.outputs.append(artifacts.write_table("candidates", run_dir, cands))
    write_markups(artifacts.path("markups", run_dir), lists)
    result.outputs.append(artifacts.path("markups", run_dir))
    metrics = map_metrics(cands, nodules, len(series), cfg.map.hit_mm, values)
    if cfg.map.selection_blobs > 0:
        metrics["selection"] = selection_froc(model, cfg, run_dir, payload["normalisation"], score)
    metrics |= {"score": score, "calibrated": calib is not None, "candidates": cfg.map.candidates,
                "series_seconds": {k.removeprefix("windows_"): v["seconds"] for k, v in result.counts.items()}}
    result.outputs.append(artifacts.write_json("map_metrics", run_dir, metrics))
    result.counts = {"series": len(series), "candidates": len(cands), "windows": sum(v["windows"] for v in result.counts.values()),
                     "windows_outside_lung": sum(v["skipped"] for v in result.counts.values())}
    result.extra = {k: metrics[k] for k in ("pooled",) if k in metrics}
    return result


def selection_froc(model: Detector, cfg: Config, run_dir: Path, norm: dict, score: str) -> dict:
    """The label-free selection measure (:mod:`evaluation.painted_blobs`): blobs painted into the normal validation
    tissue of every series that has some, found among the map's candidates there; FROC and CPM over those series."""
    t0 = time.perf_counter()
    splits = artifacts.read_splits(run_dir, ["sample_id", "split", "label"])
    samples = artifacts.read_samples(run_dir, ["sample_id", "series_uid", "i", "j", "k"])
    val = samples.merge(splits, on="sample_id")
    val = val[(val["split"] == "val") & (val["label"] == 0)]
    rng = np.random.default_rng([cfg.run.seed, cfg.map.selection_seed])
    cands, blobs = [], []
    for uid, cubes in sorted(val.groupby("series_uid"), key=lambda kv: str(kv[0])):
        ct = sitk.ReadImage(str(artifacts.path("volume", run_dir, series=uid)))
        spacing_zyx = np.asarray(ct.GetSpacing()[::-1], float)
        hu = sitk.GetArrayViewFromImage(ct)
        lung = ct_lung_region(ct, cfg.extract.background.lung_hu_max, cfg.map.lung_closing_mm)
        half = np.maximum(0, np.floor(cfg.extract.background.stride_mm / 2 / spacing_zyx)).astype(int)
        region = validation_region(cubes[["k", "j", "i"]].to_numpy(int), half, hu.shape, lung)
        centres = place_blobs(region, hu, cfg.map.selection_blobs, spacing_zyx, rng)
        scales, peaks_hu = draw_blobs(len(centres), tuple(cfg.map.selection_radius_mm), tuple(cfg.map.selection_hu), rng)
        painted = paint_blobs(hu, centres, scales, peaks_hu, spacing_zyx)
        m = sweep(model, painted, tuple(spacing_zyx), norm, cfg, score)
        found, values, _, _ = _find(m, region, tuple(spacing_zyx), cfg)
        cands.append(pd.DataFrame({"series_uid": uid, **voxel_mm(found, spacing_zyx), "score": values}))
        blobs.append(pd.DataFrame({"series_uid": uid, **voxel_mm(centres, spacing_zyx), "radius_mm": np.maximum(scales, cfg.map.hit_mm)}))
    return blob_froc(cands, blobs) | {"seconds": round(time.perf_counter() - t0, 1)}


def _calibration(model: Detector, cfg: Config, run_dir: Path, folder: Path, norm: dict, score: str) -> dict | None:
    """This run's window calibration (fitted and written), or, scoring new data, the one of the model's run."""
    if cfg.score.model is not None:
        stored = artifacts.read_json("map_calibration", folder.parent)
        if not stored or stored.get("score") != score or stored.get("mc_samples") != cfg.map.mc_samples:
            return None  # calibrated for another score or Monte-Carlo count: its p-values would not hold
        try:
            check_calibration(stored, [score])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{artifacts.path('map_calibration', folder.parent)}: not a usable calibration ({exc})") from None
        return stored
    calib = window_calibration(model, run_dir, norm, cfg, score)
    if calib is not None:
        artifacts.write_json("map_calibration", run_dir, calib)
    return calib


def _map_series(model: Detector, cfg: Config, run_dir: Path, uid: str, norm: dict, score: str, calib: dict | None,
                nodules: pd.DataFrame, result: StageResult) -> tuple[pd.DataFrame, dict, list[dict]]:
    """Map one series, write its two maps and markups; returns its candidate table, sweep counts and the map's
    value at each of its nodules."""
    ct = sitk.ReadImage(str(artifacts.path("volume", run_dir, series=uid)))
    spacing_zyx = tuple(ct.GetSpacing()[::-1])
    hu = sitk.GetArrayViewFromImage(ct)
    m = sweep(model, hu, spacing_zyx, norm, cfg, score)
    pmap = np.ones_like(m.score)
    if calib is not None:
        inside = np.isfinite(m.score)
        pmap[inside] = p_values(m.score[inside], calib)
    for name, arr in (("anomaly_map", m.voxel), ("anomaly_p", pmap.astype(np.float32))):
        img = sitk.GetImageFromArray(arr.astype(np.float32))
        img.CopyInformation(ct)
        write_nifti(artifacts.path(name, run_dir, series=uid), img)
        result.outputs.append(artifacts.path(name, run_dir, series=uid))
    t0 = time.perf_counter()
    region = ct_lung_region(ct, cfg.extract.background.lung_hu_max, cfg.map.lung_closing_mm) & m.mask
    found, values, sizes, ranked = _find(m, region, spacing_zyx, cfg)
    own = nodules[nodules["series_uid"] == uid]
    table = candidate_table(ct, uid, found, values, sizes, pmap[tuple(found.T)] if len(found) else np.zeros(0), own, cfg.map.hit_mm)
    write_markups(artifacts.path("series_markups", run_dir, series=uid), [markups(table, artifacts.series_stem(uid))])
    result.outputs.append(artifacts.path("series_markups", run_dir, series=uid))
    result.ok(f"series {uid}")
    stats = {"windows": m.windows, "skipped": m.skipped, "seconds": round(m.seconds + time.perf_counter() - t0, 2),
             "sweep_seconds": round(m.seconds, 2), "lung_region_ml": round(float(region.sum() * np.prod(spacing_zyx)) / 1000, 1)}
    return table, stats, nodule_values(ct, own, ranked, region)


def candidate_table(ct: sitk.Image, uid: str, found: np.ndarray, values: np.ndarray, sizes: np.ndarray, p_at: np.ndarray,
                    own: pd.DataFrame, hit_mm: float) -> pd.DataFrame:
    """One series' candidates (``found``: voxel indices zyx, highest first): rank, LPS mm, voxel index (i, j, k), score,
    p-value, size (mm), the nearest of its annotated nodules ``own``, the distance (mm) and whether it hits one."""
    ijk = found[:, ::-1]
    lps = index_to_world(lps_affine(ct), ijk) if len(ijk) else np.zeros((0, 3))
    table = pd.DataFrame({"series_uid": uid, "rank": np.arange(1, len(ijk) + 1), "x_mm": lps[:, 0], "y_mm": lps[:, 1], "z_mm": lps[:, 2],
                          "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2], "score": values, "p_value": p_at, "size_mm": sizes})
    table["nearest_nodule"], table["nodule_mm"] = _nearest_nodule(table, own)
    table["hit"] = candidate_hits(table, own, hit_mm)
    return table


def _find(m: SeriesMap, region: np.ndarray, spacing_zyx, cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidates (zyx), their scores and sizes (mm), and the map they were ranked on (``map.candidates``)."""
    if cfg.map.candidates == "window":
        found = peaks(m.score, m.mask, spacing_zyx, cfg.map.nms_mm, cfg.map.max_candidates)
        values = m.score[tuple(found.T)].astype(float) if len(found) else np.zeros(0)
        return found, values, np.full(len(found), np.nan), np.where(np.isfinite(m.score), m.score, 0.0)
    return voxel_candidates(m.voxel, region, spacing_zyx, cfg.map.smooth_mm, cfg.map.nms_mm, cfg.map.max_candidates, cfg.map.size_level)


def nodule_values(ct: sitk.Image, own: pd.DataFrame, ranked: np.ndarray, region: np.ndarray) -> list[dict]:
    """Per nodule: the ranked map's value at its centre, that value's percentile in the lung region, and whether
    the centre lies in the region (candidates are looked for only there)."""
    out = []
    if not len(own):
        return out
    ijk = np.rint(world_to_index(lps_affine(ct), own[["x_mm", "y_mm", "z_mm"]].to_numpy(float))).astype(int)
    for nid, (i, j, k) in zip(own["nodule_id"], ijk):
        v, pct, inside = value_at(ranked, region, np.array([k, j, i]))
        out.append({"nodule_id": nid, "map_value": v, "map_percentile": pct, "in_region": inside})
    return out


def _nearest_nodule(table: pd.DataFrame, nodules: pd.DataFrame) -> tuple[list, list]:
    if not len(nodules) or not len(table):
        return [""] * len(table), [np.nan] * len(table)
    d = np.linalg.norm(table[["x_mm", "y_mm", "z_mm"]].to_numpy(float)[:, None] - nodules[["x_mm", "y_mm", "z_mm"]].to_numpy(float)[None], axis=2)
    j = d.argmin(1)
    return nodules["nodule_id"].to_numpy()[j].tolist(), d[np.arange(len(table)), j].tolist()


def map_metrics(cands: pd.DataFrame, nodules: pd.DataFrame, n_scans: int, hit_mm: float, values: list[dict] | None = None) -> dict:
    """Per nodule (rank and distance of the nearest candidate, hit, the map's value there, size and malignancy),
    pooled and per-scan FROC sensitivities with the CPM, and how the map value follows malignancy."""
    by_id = {v["nodule_id"]: v for v in values or []}
    per_nodule = []
    for uid, own in nodules.groupby("series_uid"):
        hits = nodule_hits(cands[cands["series_uid"] == uid] if len(cands) else cands, own, hit_mm)
        for (_, n), (_, h) in zip(own.iterrows(), hits.iterrows()):
            extra = {c: _plain(n[c]) for c in ("diameter_mm", "malignancy_median") if c in own.columns}
            per_nodule.append({"series_uid": uid, "nodule_id": n["nodule_id"], **{c: float(n[c]) for c in ("x_mm", "y_mm", "z_mm")},
                               **h.to_dict(), **extra,
                               **{k: v for k, v in by_id.get(n["nodule_id"], {}).items() if k != "nodule_id"}})
    empty = {rate_key(r): float("nan") for r in FP_RATES} | {"cpm": float("nan")}
    pooled = froc(cands, nodules, max(n_scans, 1), hit_mm) if len(cands) else empty
    per_scan = froc_per_scan(cands, nodules, hit_mm) if len(cands) and len(nodules) else {}
    return {"nodules": per_nodule, "pooled": pooled | {"nodules": len(nodules), "scans": n_scans}, "per_scan": per_scan,
            "malignancy": _malignancy(per_nodule),
            "definitions": {"nearest_rank": "rank (1 = highest score) of the candidate nearest to the nodule centre",
                            "hit": f"a candidate within the nodule's radius (diameter_mm / 2), or {hit_mm:g} mm when unknown",
                            "sens_at_k_fp": "FROC: share of nodules hit before the k-th false candidate per scan (all scans ranked together)",
                            "cpm": "mean of the FROC sensitivities at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false candidates per scan (LUNA16)",
                            "map_value": "the ranked map (smoothed voxel map) at the nodule centre, the maximum within one voxel",
                            "map_percentile": "share (%) of lung-region voxels below map_value"}}


def _plain(v):
    v = pd.to_numeric(v, errors="coerce")
    return None if pd.isna(v) else float(v)


def _malignancy(per_nodule: list[dict]) -> dict:
    """Spearman correlation of the map value (and its percentile) with the nodules' median malignancy rating."""
    rows = pd.DataFrame(per_nodule)
    if not len(rows) or "malignancy_median" not in rows or "map_value" not in rows:
        return {}
    rows = rows.dropna(subset=["malignancy_median", "map_value"])
    if len(rows) < 3 or rows["malignancy_median"].nunique() < 2:
        return {"nodules": int(len(rows))}
    return {"nodules": int(len(rows)),
            "spearman_value": float(rows["map_value"].corr(rows["malignancy_median"], method="spearman")),
            "spearman_percentile": float(rows["map_percentile"].corr(rows["malignancy_median"], method="spearman"))}
