"""Ingest stage for a folder of 2D image files (``ingest.format: images``): X-ray, dermatology.

labels CSV (:mod:`preprocessing.labels`) → one job per image: read the file
(:mod:`preprocessing.images2d`), check its channel count, resample it to ``ingest.spacing_mm``
(MONAI ``Resized``, anti-aliased by default) when its pixel spacing is known → the same
``arrays.npz`` / ``arrays.csv`` contract as array datasets (:func:`preprocessing.arrays.write_arrays`),
so extract (centre crop to ``extract.cube_size``), split, train, score and evaluate are shared.

Pixel spacing, first that applies: the labels CSV's ``spacing_column``; the file's own (DICOM
Pixel/Imager Pixel Spacing); ``ingest.images.pixel_spacing_mm``; else the image stays on its own
grid (``spacing_source`` = ``none`` in ``arrays.csv``). Each bad file or row is one line in
``errors.csv``; the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.engine import map_items
from pipeline.core.errors import StageError
from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from preprocessing.arrays import spacing_text, write_arrays
from preprocessing.images2d import conform_channels, read_image
from preprocessing.labels import read_labels
from preprocessing.resize import resample_to_spacing


@dataclass(frozen=True)
class _Job:
    sample_id: str
    file: Path
    csv_spacing: float | None  # from the labels CSV (mm, both axes)
    default_spacing: float | None  # ingest.images.pixel_spacing_mm
    channels: int
    target_mm: float
    antialias: bool


def _load_one(job: _Job) -> dict:
    """Read, check and resample one image; raises ItemError naming the file."""
    img = read_image(job.file)
    pixels = conform_channels(img.pixels, job.channels, job.file)
    if job.csv_spacing is not None:
        spacing, source = (job.csv_spacing, job.csv_spacing), "labels_csv"
    elif img.spacing_mm is not None:
        spacing, source = img.spacing_mm, img.spacing_source
    elif job.default_spacing is not None:
        spacing, source = (job.default_spacing, job.default_spacing), "config"
    else:
        spacing, source = None, "none"
    grid = resample_to_spacing(pixels, spacing, job.target_mm, job.antialias) if spacing is not None else pixels
    return {"grid": grid, "spacing": spacing, "spacing_source": source, "format": img.file_format,
            "orig_shape": "x".join(map(str, pixels.shape[1:]))}


def ingest(cfg: Config, run_dir: Path) -> StageResult:
    ic = cfg.ingest.images
    table, row_errors, counts = read_labels(cfg)
    result = StageResult()
    for item, msg in row_errors:
        result.fail(item, msg)
    if table.empty:
        raise StageError(f"ingest: no usable rows in the labels CSV ({len(row_errors)} error(s), "
                         f"{counts['left_out_by_label']} left out by label); see errors.csv")
    jobs = [_Job(r.sample_id, r.file, None if np.isnan(r.spacing_csv) else float(r.spacing_csv), ic.pixel_spacing_mm, ic.channels,
                 cfg.ingest.spacing_mm, cfg.ingest.antialias_on) for r in table.itertuples()]
    loaded: dict[str, dict] = {}
    for item, ok, res in map_items(_load_one, jobs, cfg.run.workers, desc="ingest", key=lambda j: f"image {j.sample_id}"):
        if ok:
            loaded[item.removeprefix("image ")] = res
            result.ok(item)
        else:
            result.fail(item, res)
    if not loaded:
        raise StageError(f"ingest: none of the {len(table)} images could be read; see errors.csv")
    table = table[table["sample_id"].isin(loaded)].reset_index(drop=True)  # keeps the labels CSV order
    info = [loaded[s] for s in table["sample_id"]]
    table = table.drop(columns=["spacing_csv"]).assign(
        file=[str(f) for f in table["file"]], format=[r["format"] for r in info], orig_shape=[r["orig_shape"] for r in info],
        spacing_mm=[spacing_text(r["spacing"]) for r in info], spacing_source=[r["spacing_source"] for r in info])
    result.outputs = write_arrays(run_dir, table, [r["grid"] for r in info], 2)
    result.counts = {"rows": counts["rows"], "images": int(len(table)), "normal": int((table.label == 0).sum()),
                     "anomalous": int((table.label == 1).sum()),
                     "left_out_by_label": counts["left_out_by_label"], "failed": len(result.errors),
                     "resampled": int(sum(r["spacing"] is not None for r in info))}
    return result
