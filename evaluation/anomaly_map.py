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
4. candidates are the local maxima of the window-score map inside the mask, at least
   ``map.nms_mm`` apart, highest first (``map.max_candidates`` per series).

Each map is written on the CT's own grid (``CopyInformation``): its affine equals the CT's. The
annotated nodules (the nodule table, LPS mm) are then found among the candidates: a candidate hits
a nodule within its radius (``diameter_mm`` / 2) or ``map.hit_mm`` when the table has none. Per
nodule: the rank and distance of the nearest candidate; pooled: FROC sensitivities at 1, 2, 4
and 8 false candidates per scan.
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
from preprocessing.nifti import write_nifti
from preprocessing.nodules import read_nodules

FP_RATES = (1, 2, 4, 8)
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
    padded = np.pad(lung, [(0, int(p)) for p in (-shape) % factor])
    z, y, x = (np.asarray(padded.shape) // factor).tolist()
    coarse = padded.reshape(z, factor, y, factor, x, factor).any(axis=(1, 3, 5))
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


def candidates(smap: np.ndarray, mask: np.ndarray, spacing_zyx, nms_mm: float, max_n: int) -> np.ndarray:
    """``zyx`` indices of the local maxima of the score map inside ``mask``, highest first, ≥ ``nms_mm`` apart."""
    values = np.where(mask & np.isfinite(smap), smap, -np.inf)
    size = np.maximum(1, np.round(nms_mm / np.asarray(spacing_zyx)).astype(int)) | 1
    peaks = np.argwhere((values == ndimage.maximum_filter(values, size=size)) & np.isfinite(values))
    peaks = peaks[np.argsort(-values[tuple(peaks.T)], kind="stable")]
    kept: list[np.ndarray] = []
    for p in peaks:
        if all(np.linalg.norm((p - q) * spacing_zyx) >= nms_mm for q in kept):
            kept.append(p)
            if len(kept) == max_n:
                break
    return np.array(kept, dtype=int).reshape(-1, 3)


def nodule_hits(cands: pd.DataFrame, nodules: pd.DataFrame, hit_mm: float) -> pd.DataFrame:
    """Per nodule: the nearest candidate's rank (1 = highest score) and distance (mm), and whether it hits.

    ``cands``: one series' candidates (x_mm, y_mm, z_mm, rank); ``nodules``: its nodules (x_mm, y_mm,
    z_mm, radius_mm). A nodule with no candidate gets rank and distance NaN and no hit.
    """
    rows = []
    pts = cands[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
    for _, n in nodules.iterrows():
        centre = n[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        radius = float(n["radius_mm"]) if np.isfinite(n["radius_mm"]) else hit_mm
        if len(pts):
            d = np.linalg.norm(pts - centre, axis=1)
            j = int(np.argmin(d))
            hits = np.flatnonzero(d <= radius)
            rows.append({"nearest_rank": int(cands["rank"].iloc[j]), "nearest_mm": float(d[j]), "radius_mm": radius,
                         "hit": bool(len(hits)), "first_hit_rank": int(cands["rank"].iloc[hits].min()) if len(hits) else None})
        else:
            rows.append({"nearest_rank": None, "nearest_mm": None, "radius_mm": radius, "hit": False, "first_hit_rank": None})
    return pd.DataFrame(rows, index=nodules.index)


def froc(cands: pd.DataFrame, nodules: pd.DataFrame, n_scans: int, hit_mm: float, rates=FP_RATES) -> dict[str, float]:
    """Sensitivity at ``rates`` false candidates per scan, candidates of all scans ranked by score together.

    A candidate is true when it lies within the radius (or ``hit_mm``) of a nodule of its series; a
    nodule counts once, at its first true candidate; later candidates on it are neither true nor false.
    """
    if not len(nodules):
        return {f"sens_at_{r}_fp": float("nan") for r in rates}
    order = cands.sort_values("score", ascending=False, kind="stable")
    found: set = set()
    fps, curve = 0, []
    for _, c in order.iterrows():
        own = nodules[nodules["series_uid"] == c["series_uid"]]
        d = np.linalg.norm(own[["x_mm", "y_mm", "z_mm"]].to_numpy(float) - c[["x_mm", "y_mm", "z_mm"]].to_numpy(float), axis=1)
        radius = np.where(np.isfinite(own["radius_mm"].to_numpy(float)), own["radius_mm"].to_numpy(float), hit_mm)
        hit = set(own.index[d <= radius])
        if not hit:
            fps += 1
        found |= hit
        curve.append((fps / n_scans, len(found) / len(nodules)))
    return {f"sens_at_{r}_fp": float(max([s for f, s in curve if f <= r], default=0.0)) for r in rates}


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
    """The annotated nodules of the mapped series (LPS mm, radius when the table gives a diameter)."""
    if cfg.ingest.format != "dicom" or not Path(cfg.extract.nodules).exists():
        return pd.DataFrame(columns=["series_uid", "nodule_id", "x_mm", "y_mm", "z_mm", "radius_mm"])
    table = read_nodules(cfg.extract.nodules, series)[0]
    table["radius_mm"] = pd.to_numeric(table["diameter_mm"], errors="coerce") / 2 if "diameter_mm" in table.columns else np.nan
    inside = np.zeros(len(table), bool)
    for uid, rows in table.groupby("series_uid").indices.items():
        inside[rows] = _inside_volume(run_dir, uid, table.iloc[rows][["x_mm", "y_mm", "z_mm"]].to_numpy(float))
    return table[inside][["series_uid", "nodule_id", "x_mm", "y_mm", "z_mm", "radius_mm"]].reset_index(drop=True)


def _inside_volume(run_dir: Path, uid: str, lps_mm: np.ndarray) -> np.ndarray:
    """Which LPS points (n, 3; mm) fall inside the ingested volume of their series (its header only, read once;
    the extract stage reports the others)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(artifacts.path("volume", run_dir, series=uid)))
    reader.ReadImageInformation()
    ijk = np.rint(world_to_index(lps_affine(reader), lps_mm)).astype(int)  # the reader has the image's origin, spacing, direction
    return np.all((ijk >= 0) & (ijk < np.array(reader.GetSize())), axis=1)


def map_run(cfg: Config, run_dir: Path) -> StageResult:
    """The map stage: every ingested series → maps, candidates, markups; calibration and metrics (see the module docstring)."""
    result = StageResult()
    if not cfg.map.enabled or cfg.ingest.format != "dicom":
        return result
    torch.set_num_threads(cfg.run.threads)
    folder = model_folder(cfg, run_dir)
    model, payload = load_checkpoint(folder, device_for(cfg.run.device))
    score = cfg.map.score or cfg.evaluate.score
    calib = _calibration(model, cfg, run_dir, folder, payload["normalisation"], score)
    series = artifacts.read_series(run_dir)
    nodules = _nodules(cfg, run_dir, series)
    tables, lists = [], []
    for _, s in series.iterrows():
        table, stats = _map_series(model, cfg, run_dir, s["series_uid"], payload["normalisation"], score, calib, nodules, result)
        tables.append(table)
        lists.append(markups(table, artifacts.series_stem(s["series_uid"])))
        result.counts[f"windows_{artifacts.series_stem(s['series_uid'])}"] = stats
    cands = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    result.outputs.append(artifacts.write_table("candidates", run_dir, cands))
    write_markups(artifacts.path("markups", run_dir), lists)
    result.outputs.append(artifacts.path("markups", run_dir))
    metrics = _map_metrics(cands, nodules, len(series), cfg.map.hit_mm)
    result.outputs.append(artifacts.write_json("map_metrics", run_dir, metrics | {"score": score, "calibrated": calib is not None}))
    result.counts = {"series": len(series), "candidates": len(cands), "windows": sum(v["windows"] for v in result.counts.values()),
                     "windows_outside_lung": sum(v["skipped"] for v in result.counts.values())}
    result.extra = {k: metrics[k] for k in ("pooled",) if k in metrics}
    return result


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
                nodules: pd.DataFrame, result: StageResult) -> tuple[pd.DataFrame, dict]:
    """Map one series, write its two maps and markups; returns its candidate table and window counts."""
    ct = sitk.ReadImage(str(artifacts.path("volume", run_dir, series=uid)))
    spacing_zyx = tuple(ct.GetSpacing()[::-1])
    m = sweep(model, sitk.GetArrayViewFromImage(ct), spacing_zyx, norm, cfg, score)
    pmap = np.ones_like(m.score)
    if calib is not None:
        inside = np.isfinite(m.score)
        pmap[inside] = p_values(m.score[inside], calib)
    for name, arr in (("anomaly_map", m.voxel), ("anomaly_p", pmap.astype(np.float32))):
        img = sitk.GetImageFromArray(arr.astype(np.float32))
        img.CopyInformation(ct)
        write_nifti(artifacts.path(name, run_dir, series=uid), img)
        result.outputs.append(artifacts.path(name, run_dir, series=uid))
    peaks = candidates(m.score, m.mask, spacing_zyx, cfg.map.nms_mm, cfg.map.max_candidates)
    ijk = peaks[:, ::-1]
    lps = index_to_world(lps_affine(ct), ijk) if len(ijk) else np.zeros((0, 3))
    table = pd.DataFrame({"series_uid": uid, "rank": np.arange(1, len(ijk) + 1), "x_mm": lps[:, 0], "y_mm": lps[:, 1], "z_mm": lps[:, 2],
                          "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2], "score": m.score[tuple(peaks.T)] if len(peaks) else [],
                          "p_value": pmap[tuple(peaks.T)] if len(peaks) else []})
    own = nodules[nodules["series_uid"] == uid]
    table["nearest_nodule"], table["nodule_mm"] = _nearest_nodule(table, own)
    write_markups(artifacts.path("series_markups", run_dir, series=uid), [markups(table, artifacts.series_stem(uid))])
    result.outputs.append(artifacts.path("series_markups", run_dir, series=uid))
    result.ok(f"series {uid}")
    return table, {"windows": m.windows, "skipped": m.skipped, "seconds": round(m.seconds, 2)}


def _nearest_nodule(table: pd.DataFrame, nodules: pd.DataFrame) -> tuple[list, list]:
    if not len(nodules) or not len(table):
        return [""] * len(table), [np.nan] * len(table)
    d = np.linalg.norm(table[["x_mm", "y_mm", "z_mm"]].to_numpy(float)[:, None] - nodules[["x_mm", "y_mm", "z_mm"]].to_numpy(float)[None], axis=2)
    j = d.argmin(1)
    return nodules["nodule_id"].to_numpy()[j].tolist(), d[np.arange(len(table)), j].tolist()


def _map_metrics(cands: pd.DataFrame, nodules: pd.DataFrame, n_scans: int, hit_mm: float) -> dict:
    """Per nodule (rank and distance of the nearest candidate, hit) and pooled FROC sensitivities."""
    per_nodule = []
    for uid, own in nodules.groupby("series_uid"):
        hits = nodule_hits(cands[cands["series_uid"] == uid] if len(cands) else cands, own, hit_mm)
        for (_, n), (_, h) in zip(own.iterrows(), hits.iterrows()):
            per_nodule.append({"series_uid": uid, "nodule_id": n["nodule_id"], **h.to_dict()})
    pooled = froc(cands, nodules, max(n_scans, 1), hit_mm) if len(cands) else {f"sens_at_{r}_fp": float("nan") for r in FP_RATES}
    return {"nodules": per_nodule, "pooled": pooled | {"nodules": len(nodules), "scans": n_scans},
            "definitions": {"nearest_rank": "rank (1 = highest score) of the candidate nearest to the nodule centre",
                            "hit": f"a candidate within the nodule's radius (diameter_mm / 2), or {hit_mm:g} mm when unknown",
                            "sens_at_k_fp": "FROC: share of nodules hit before the k-th false candidate per scan (all scans ranked together)"}}
