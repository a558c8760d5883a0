"""Nodule cubes: nodule table + ingested CT volumes → ``cubes/<series>.npy`` shards and ``samples.csv``.

Each series' cubes go to their own shard ``cubes/<series stem>.npy``, written by the worker that
cut them as soon as the series is done, so the memory of the stage is that of one series (per
worker) whatever the number of series; only the series' table rows come back to the driver. A
shard holds (n, 1, S, S, S) int16 in HU, ``zyx`` order, exactly as cut from the 1 mm volume, in
``sample_id`` order. (Array datasets store (n, C, *spatial) float32 in source units.)
Normalisation (HU window → [0, 1]) is applied on load with the
config's window, the same function the model checkpoint records for new data.

``samples.csv`` has one row per cube, sorted by sample_id: sample_id, patient_id, series_uid,
kind (nodule | background), nodule_id, label (0 normal, 1 anomaly), malignancy, centre (LPS mm
and ijk), start index, padded flag, ``affine_lps``: the 16 numbers (row-major) of the cube's own
voxel(ijk)→LPS affine, then ``shard`` and ``shard_row``: where the cube is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from pipeline.core import artifacts, io
from pipeline.core.engine import map_items
from pipeline.core.errors import StageError
from pipeline.core.manifest import Manifest
from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from preprocessing.cubes import background_starts, cube_start, cut_cube
from preprocessing.geometry import lps_affine, sub_affine, world_to_index
from preprocessing.lung import ct_lung_region
from preprocessing.nodules import read_nodules
from preprocessing.resample import AIR_HU


@dataclass(frozen=True)
class _Job:
    series_uid: str
    patient_id: str
    volume: Path
    nodules: pd.DataFrame
    cfg: object  # ExtractConfig
    seed: int
    run_dir: Path


def _label(cfg, rating: float) -> int | None:
    if cfg.nodule_label == "anomaly":
        return 1
    if not np.isfinite(rating):
        return None
    if rating <= cfg.normal_max_malignancy:
        return 0
    if rating >= cfg.anomaly_min_malignancy:
        return 1
    return None


def _extract_series(job: _Job) -> dict:
    """Cut one series' cubes and write its shard; returns its table rows (a DataFrame), errors and shard path."""
    cfg, size = job.cfg, job.cfg.cube_size
    image = sitk.ReadImage(str(job.volume))
    vol = sitk.GetArrayViewFromImage(image)  # zyx, HU int16
    aff = lps_affine(image)
    rows, cubes, errors = [], [], []
    centres = []
    for _, nod in job.nodules.iterrows():
        item = f"nodule {nod['nodule_id']}"
        xyz = np.array([nod["x_mm"], nod["y_mm"], nod["z_mm"]], dtype=float)
        ijk = np.rint(world_to_index(aff, xyz)[0]).astype(int)
        centres.append(ijk)
        rating = float(nod[cfg.malignancy_column]) if cfg.malignancy_column in nod and pd.notna(nod[cfg.malignancy_column]) else float("nan")
        label = _label(cfg, rating)
        if label is None:
            continue  # rating between the normal and anomaly bands: excluded by design, not an error
        if np.any(ijk < 0) or np.any(ijk >= np.asarray(image.GetSize())):
            errors.append((item, f"{item}: centre {xyz.tolist()} mm (LPS) lies outside series {job.series_uid} "
                                 f"(index {ijk.tolist()}, size {list(image.GetSize())})"))
            continue
        start = cube_start(ijk, size)
        cube, padded = cut_cube(vol, start, size, AIR_HU)
        cubes.append(cube)
        rows.append(_row(job, f"{job.series_uid}:{nod['nodule_id']}", "nodule", str(nod["nodule_id"]), label, rating, aff, ijk, start, padded, size))
    n_bg = 0
    if cfg.background.enabled:
        rng = np.random.default_rng([job.seed, int(io.sha256_json(job.series_uid)[:8], 16)])
        spacing = float(np.mean(image.GetSpacing()))
        bg = cfg.background
        region = ct_lung_region(image, bg.lung_hu_max, bg.lung_closing_mm) if bg.centres == "lung_region" else None
        starts = background_starts(vol, size, max(1, int(round(bg.stride_mm / spacing))), np.array(centres).reshape(-1, 3),
                                   bg.min_distance_mm / spacing, bg.lung_fraction, bg.lung_hu_max, bg.max_per_series, rng, region)
        for start in starts:
            cube, padded = cut_cube(vol, start, size, AIR_HU)
            cubes.append(cube)
            ijk = start + size // 2
            rows.append(_row(job, f"{job.series_uid}:bg{'_'.join(map(str, ijk))}", "background", "", 0, float("nan"), aff, ijk, start, padded, size))
            n_bg += 1
    table, shard = _write_shard(job, rows, cubes)
    return {"rows": table, "shard": shard, "errors": errors, "n_background": n_bg}


def _write_shard(job: _Job, rows: list[dict], cubes: list[np.ndarray]) -> tuple[pd.DataFrame, Path | None]:
    """Write the series' cubes in sample_id order to ``cubes/<series stem>.npy`` (none without cubes); their rows say where."""
    table = pd.DataFrame(rows)
    if not rows:
        return table, None
    order = np.argsort(table["sample_id"].to_numpy(), kind="stable")
    stem = artifacts.series_stem(job.series_uid)
    shard = artifacts.write_cube_shard(job.run_dir, stem, np.stack([cubes[i] for i in order])[:, None].astype(np.int16, copy=False))
    row = np.empty(len(order), dtype=np.int64)
    row[order] = np.arange(len(order))
    return table.assign(shard=stem, shard_row=row), shard


def _row(job: _Job, sample_id: str, kind: str, nodule_id: str, label: int, rating: float, aff: np.ndarray, ijk: np.ndarray,
         start: np.ndarray, padded: bool, size: int) -> dict:
    centre_lps = aff[:3, :3] @ ijk + aff[:3, 3]
    return {
        "sample_id": sample_id,
        "patient_id": job.patient_id,
        "series_uid": job.series_uid,
        "kind": kind,
        "nodule_id": nodule_id,
        "label": int(label),
        "malignancy": rating,
        "x_mm": centre_lps[0], "y_mm": centre_lps[1], "z_mm": centre_lps[2],
        "i": int(ijk[0]), "j": int(ijk[1]), "k": int(ijk[2]),
        "start_i": int(start[0]), "start_j": int(start[1]), "start_k": int(start[2]),
        "size": size,
        "padded": bool(padded),
        "affine_lps": " ".join(f"{v:.6f}" for v in sub_affine(aff, start).ravel()),
    }


def extract(cfg: Config, run_dir: Path) -> StageResult:
    """Cut a cube at every nodule of the table (and background cubes of lung tissue when enabled)."""
    series = artifacts.read_series(run_dir)
    failed = frozenset(i.split(" ", 1)[1] for i in Manifest(run_dir).failed_items("ingest") if i.startswith("series "))
    nodules, errors, notes = read_nodules(cfg.extract.nodules, series, failed)
    result = StageResult(notes=notes)
    for item, msg in errors:
        result.fail(item, msg)
    jobs = []
    for _, s in series.iterrows():
        nods = nodules[nodules["series_uid"] == s["series_uid"]]
        if len(nods) == 0 and not cfg.extract.background.enabled:
            continue
        jobs.append(_Job(s["series_uid"], s["patient_id"], artifacts.path("volume", run_dir, series=s["series_uid"]), nods,
                         cfg.extract, cfg.run.seed, run_dir))
    tables, shards = [], []
    for item, ok, res in map_items(_extract_series, jobs, cfg.run.workers, engine=cfg.run.engine, desc="extract",
                                   key=lambda j: f"series {j.series_uid}"):
        if not ok:
            result.fail(item, res)
            continue
        result.ok(item)
        for it, msg in res["errors"]:
            result.fail(it, msg)
        if res["shard"] is not None:
            tables.append(res["rows"])
            shards.append(Path(res["shard"]))
    if not tables:
        raise StageError("extract: no cubes were extracted; see errors.csv", result.errors)
    table = pd.concat(tables, ignore_index=True)
    tables.clear()
    table = table.iloc[np.argsort(table["sample_id"].to_numpy(), kind="stable")].reset_index(drop=True)
    shards.sort()
    artifacts.remove_stale_shards(run_dir, shards)
    samples_path = artifacts.write_table("samples", run_dir, table)
    result.counts = {
        "nodules_in_table": int(len(nodules) + len(errors)),
        "nodule_cubes": int((table.kind == "nodule").sum()),
        "background_cubes": int((table.kind == "background").sum()),
        "padded_cubes": int(table.padded.sum()),
        "normal": int((table.label == 0).sum()),
        "anomalous": int((table.label == 1).sum()),
    }
    result.outputs = [*shards, samples_path]
    return result
