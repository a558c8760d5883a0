"""Whole-scan map ensemble: the voxel maps several finished runs made of the same CT series → one map, its candidates, FROC.

Each member's voxel map (``overlays/<series>_anomaly.nii.gz``, smoothed by the member's own ``map.smooth_mm``)
becomes, at every voxel of the lung region, its upper-tail rank among the region's voxels,
p = (1 + #{region voxels ≥ v}) / (n + 1): an empirical p-value under the scan's own lung tissue (nodules are
under 0.1 % of those voxels), which removes each detector's scale. Fisher's method combines the members,
−2 Σ log p_i (``evaluation.ensemble.combine``), so a voxel ranks high where several detectors find it unusual
at once; a vessel edge that only one of them marks falls back. No label is used. Candidates, sizes and
metrics are then those of the map stage (:mod:`evaluation.anomaly_map`), with the first member's ``map``
settings (the combined map is not smoothed again).

Every member must have mapped the series on the same grid (the same ingest), e.g. runs of one
protocol fold. The CT volume is linked beside the combined map (``volumes/``), so the output folder
opens in 3D Slicer like a run's.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from evaluation.anomaly_map import candidate_table, map_metrics, markups, nodule_values, write_markups
from evaluation.ensemble import combine
from evaluation.map_candidates import smooth_map, voxel_candidates
from pipeline.core import artifacts, io
from pipeline.core.errors import StageError
from pipeline.core.schema import BackgroundConfig, MapConfig
from preprocessing.lung import ct_lung_region
from preprocessing.nifti import write_nifti


def tail_p(values: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Each region voxel's upper-tail rank among the region's voxels, (1 + #{≥ v}) / (n + 1) in (0, 1]; 1 outside."""
    inside = values[region].astype(np.float64)
    ref = np.sort(inside)
    p = np.ones(values.shape, np.float64)
    p[region] = (1.0 + len(ref) - np.searchsorted(ref, inside, side="left")) / (len(ref) + 1.0)
    return p


def combine_maps(maps: list[np.ndarray], region: np.ndarray, method: str = "fisher") -> np.ndarray:
    """The members' maps (same grid) → one map: their tail ranks in ``region`` combined (0 outside the region)."""
    out = np.zeros(maps[0].shape, np.float32)
    out[region] = combine(np.stack([tail_p(m, region)[region] for m in maps]), method)
    return out


def _settings(run_dir: Path) -> tuple[MapConfig, float]:
    """A member's ``map`` section and lung threshold (HU) from its stored ``config.yaml`` (schema defaults elsewhere)."""
    raw = yaml.safe_load(artifacts.path("config", run_dir).read_text()) or {}
    known = {f.name for f in fields(MapConfig)}
    section = {k: v for k, v in (raw.get("map") or {}).items() if k in known}
    hu_max = ((raw.get("extract") or {}).get("background") or {}).get("lung_hu_max", BackgroundConfig().lung_hu_max)
    return replace(MapConfig(), **section), float(hu_max)


def ct_map_metrics(run_dir: Path) -> dict | None:
    """``run_dir``'s ``map_metrics.json`` when its map stage mapped CT series (not 2D images), else None."""
    metrics = artifacts.read_json("map_metrics", run_dir) or {}
    return metrics if metrics.get("kind") != "images" and metrics.get("series_seconds") else None


def has_ct_map(run_dir: Path) -> bool:
    """Whether ``run_dir``'s map stage mapped CT series (not 2D images)."""
    return ct_map_metrics(run_dir) is not None


def _member_metrics(run_dir: Path) -> dict:
    metrics = ct_map_metrics(run_dir)
    if metrics is None:
        raise StageError(f"map ensemble: {run_dir} has no whole-scan map (run its map stage on CT series first)")
    return metrics


def _link(src: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``src`` (a copy across file systems); left alone if it exists."""
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def ensemble_maps(run_dirs: list[Path], out: Path, method: str = "fisher") -> dict:
    """Combine the members' maps of every series they all mapped; write the combined maps, ``candidates.csv``,
    the markups and ``map_metrics.json`` (with ``members`` and ``method``) under ``out``; return the metrics."""
    if len(run_dirs) < 2:
        raise StageError("map ensemble: needs at least two member runs")
    member_metrics = [_member_metrics(r) for r in run_dirs]
    settings = [_settings(r) for r in run_dirs]
    uids = sorted(set.intersection(*[set(m.get("series_seconds", {})) for m in member_metrics]))
    if not uids:
        raise StageError("map ensemble: the members mapped no series in common")
    cfg, hu_max = settings[0]
    nodules = pd.DataFrame(member_metrics[0]["nodules"], columns=None)
    keep = [c for c in ("series_uid", "nodule_id", "x_mm", "y_mm", "z_mm", "radius_mm", "diameter_mm", "malignancy_median") if c in nodules]
    nodules = nodules[keep] if len(nodules) else pd.DataFrame(columns=["series_uid", "nodule_id", "x_mm", "y_mm", "z_mm", "radius_mm"])
    tables, lists, values, seconds = [], [], [], {}
    with io.confine(out):
        for uid in uids:
            t0 = time.perf_counter()
            volume = artifacts.path("volume", run_dirs[0], series=uid)
            ct = sitk.ReadImage(str(volume))
            _link(volume, artifacts.path("volume", out, series=uid))  # the CT beside its map, for 3D Slicer
            spacing_zyx = tuple(ct.GetSpacing()[::-1])
            hu = sitk.GetArrayViewFromImage(ct)
            region = ct_lung_region(ct, hu_max, cfg.lung_closing_mm)
            maps = []
            for run, (mc, _) in zip(run_dirs, settings):
                m = sitk.GetArrayFromImage(sitk.ReadImage(str(artifacts.path("anomaly_map", run, series=uid)))).astype(np.float32)
                if m.shape != hu.shape:
                    raise StageError(f"map ensemble: {run}: the map of series {uid} is {m.shape}, not the grid {hu.shape} of {run_dirs[0]}")
                maps.append(smooth_map(m, spacing_zyx, mc.smooth_mm))
            combined = combine_maps(maps, region, method)
            found, vals, sizes, _ = voxel_candidates(combined, region, spacing_zyx, 0.0, cfg.nms_mm, cfg.max_candidates, cfg.size_level)
            own = nodules[nodules["series_uid"] == uid]
            table = candidate_table(ct, uid, found, vals, sizes, np.full(len(found), np.nan), own, cfg.hit_mm)
            img = sitk.GetImageFromArray(combined)
            img.CopyInformation(ct)
            write_nifti(artifacts.path("anomaly_map", out, series=uid), img)
            write_markups(artifacts.path("series_markups", out, series=uid), [markups(table, artifacts.series_stem(uid))])
            tables.append(table)
            lists.append(markups(table, artifacts.series_stem(uid)))
            values += nodule_values(ct, own, combined, region)
            # the ensemble's map time: its members' maps and the combination
            seconds[uid] = round(sum(m["series_seconds"][uid] for m in member_metrics) + time.perf_counter() - t0, 2)
        cands = pd.concat(tables, ignore_index=True)
        artifacts.write_table("candidates", out, cands)
        write_markups(artifacts.path("markups", out), lists)
        metrics = map_metrics(cands, nodules, len(uids), cfg.hit_mm, values)
        metrics |= {"score": "ensemble", "calibrated": False, "candidates": "voxel", "members": [str(r) for r in run_dirs],
                    "method": method, "series_seconds": seconds}
        artifacts.write_json("map_metrics", out, metrics)
    return metrics
