"""DICOM ingest: a folder tree of CT files → ``volumes/<series>.nii.gz`` (HU, 1 mm) and ``series.csv``.

Per series: validate the headers, check the declared size against ``ingest.max_voxels`` (before
any pixel is read), read the pixels in HU, resample to the isotropic grid with the original origin
and direction, write NIfTI atomically. A finished series leaves a small record in
``ingest/done/`` keyed by its input files and the ingest config, so a killed ingest resumes
without redoing finished series. A failing file or series becomes one line in ``errors.csv``;
the others go on. File names come from :func:`pipeline.core.artifacts.series_stem`: a UID that is
not a valid DICOM UID is stored under a hashed name (the UID itself stays in ``series.csv``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from pipeline.core import artifacts, io
from pipeline.core.engine import map_items
from pipeline.core.errors import StageError
from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from preprocessing.dicom_series import SeriesInfo, check_size, discover, overlap_notes, read_volume, validate_series
from preprocessing.nifti import write_nifti
from preprocessing.resample import resample_isotropic


@dataclass(frozen=True)
class _Job:
    info: SeriesInfo
    run_dir: Path
    spacing_mm: float
    antialias: bool
    key: str  # content key of inputs + settings, for item-level resume


def _series_key(info: SeriesInfo, spacing_mm: float, antialias: bool) -> str:
    files = [(str(s.path), s.path.stat().st_size, s.path.stat().st_mtime_ns) for s in info.slices]
    return io.sha256_json({"files": files, "spacing": spacing_mm, "antialias": antialias, "v": 1})


def _ingest_one(job: _Job) -> dict:
    with io.confine(job.run_dir):  # also in a pool or Ray worker, which does not inherit the runner's confinement
        return _ingest_series(job)


def _ingest_series(job: _Job) -> dict:
    info = job.info
    out = artifacts.path("volume", job.run_dir, series=info.series_uid)
    record = artifacts.path("ingest_record", job.run_dir, series=info.series_uid)
    if record.exists() and out.exists():
        row = json.loads(record.read_text())
        if row.get("key") == job.key:
            return row
    image = read_volume(info)
    iso = resample_isotropic(image, job.spacing_mm, job.antialias)
    hu = sitk.Cast(sitk.Round(iso), sitk.sitkInt16)  # HU fit int16; halves the file size
    write_nifti(out, hu)
    row = {
        "patient_id": info.patient_id,
        "study_uid": info.study_uid,
        "series_uid": info.series_uid,
        "modality": info.modality,
        "n_slices": len(info.slices),
        "orig_spacing_x": info.pixel_spacing_mm[1],
        "orig_spacing_y": info.pixel_spacing_mm[0],
        "orig_spacing_z": info.slice_spacing_mm,
        "orig_size": "x".join(map(str, image.GetSize())),
        "size": "x".join(map(str, iso.GetSize())),
        "origin_lps": " ".join(f"{v:.4f}" for v in iso.GetOrigin()),
        "direction": " ".join(f"{v:.6f}" for v in iso.GetDirection()),
        "volume": str(out.relative_to(job.run_dir)),
        "status": "ok",
        "key": job.key,
    }
    io.write_json(record, row)
    return row


def ingest(cfg: Config, run_dir: Path) -> StageResult:
    """Ingest every DICOM series under ``cfg.ingest.input``."""
    root = cfg.ingest.input
    if not root.exists():
        raise StageError(f"ingest.input: folder {root} does not exist")
    result = StageResult()
    found = discover(root, cfg.run.workers, cfg.run.engine)
    groups, file_errors = found.series, found.errors
    for item, msg in file_errors:
        result.fail(item, msg)
    result.ignore(found.ignored, str(root))
    result.warnings += found.warnings
    if not groups and not file_errors and not found.ignored:
        raise StageError(f"ingest.input: folder {root} holds no files (hidden files are ignored)")
    if not groups and not file_errors:
        raise StageError(f"ingest.input: folder {root} holds no DICOM image: its {len(found.ignored)} file(s) are not images "
                         f"(e.g. {found.ignored[0][1]})", ignored=result.ignored, warnings=result.warnings)
    if not groups:
        raise StageError(f"ingest.input: no readable DICOM image series under {root} "
                         f"({len(file_errors)} unreadable file(s); see errors.csv)", result.errors, result.ignored, result.warnings)
    jobs = []
    for uid, slices in groups.items():
        try:
            info = validate_series(slices, cfg.ingest.min_slices, cfg.ingest.spacing_tolerance)
            check_size(info, cfg.ingest.spacing_mm, cfg.ingest.max_voxels)
        except Exception as exc:  # InvalidSeriesError, reported per series
            result.fail(f"series {uid}", str(exc))
            continue
        jobs.append(_Job(info, run_dir, cfg.ingest.spacing_mm, cfg.ingest.antialias_on,
                         _series_key(info, cfg.ingest.spacing_mm, cfg.ingest.antialias_on)))
    rows = []
    for item, ok, res in map_items(_ingest_one, jobs, cfg.run.workers, engine=cfg.run.engine, desc="ingest",
                                   key=lambda j: f"series {j.info.series_uid}"):
        if ok:
            rows.append(res)
            result.ok(item)
        else:
            result.fail(item, res)
    if not rows:
        raise StageError(f"ingest: none of the {len(groups)} series under {root} could be ingested; see errors.csv",
                         result.errors, result.ignored, result.warnings)
    table = pd.DataFrame(rows).drop(columns=["key"]).sort_values("series_uid").reset_index(drop=True)
    result.notes += overlap_notes([j.info for j in jobs if j.info.series_uid in set(table["series_uid"])])
    result.counts = {"files_unreadable": len(file_errors), "files_not_images": len(found.ignored), "series_found": len(groups),
                     "series_ingested": len(rows), "series_failed": len(groups) - len(rows)}
    result.outputs = [artifacts.write_table("series", run_dir, table)] + [run_dir / r["volume"] for r in rows]
    return result
