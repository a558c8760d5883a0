"""Ingest stage for a folder of 2D image files (``ingest.format: images``): X-ray, dermatology.

labels CSV (:mod:`preprocessing.labels`) → one job per image: read the file
(:mod:`preprocessing.images2d`), check its channel count, resample it to ``ingest.spacing_mm``
(:mod:`preprocessing.resize`, anti-aliased by default) when its pixel spacing is known → the same
``grids/`` shards / ``arrays.csv`` contract as array datasets (:func:`preprocessing.arrays.write_arrays`),
so extract (centre crop to ``extract.cube_size``), split, train, score and evaluate are shared.

Images stream: each is handed to the grid shard writer (:mod:`preprocessing.grid_shards`) as it
arrives from the workers (``run.workers`` processes, ``CHUNK`` images per task), so the memory
held is one shard's images, whatever the number of files.

``ingest.images.short_side`` (photographs without a physical pixel size, such as dermoscopy)
resizes each image so its shorter side has that many pixels, the aspect ratio kept, in place of
the mm grid. Otherwise the pixel spacing, first that applies: the labels CSV's
``spacing_column``; the file's own (DICOM Pixel/Imager Pixel Spacing);
``ingest.images.pixel_spacing_mm``; else the image stays on its own grid (``spacing_source`` =
``none`` in ``arrays.csv``). Each bad file or row is one line in ``errors.csv``; the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import artifacts
from pipeline.core.engine import map_items
from pipeline.core.errors import ItemError, StageError
from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from preprocessing.arrays import spacing_text
from preprocessing.grid_shards import GridShardWriter, shape_text
from preprocessing.images2d import conform_channels, read_image
from preprocessing.labels import read_labels
from preprocessing.resize import resample_to_spacing, resize, short_side_size

CHUNK = 64  # images per worker task


@dataclass(frozen=True)
class _Job:
    index: int  # position in the labels table (and in the grid shards)
    sample_id: str
    file: Path
    csv_spacing: float | None  # from the labels CSV (mm, both axes)


@dataclass(frozen=True)
class _Settings:
    """What every image of the run is read and resampled with."""

    default_spacing: float | None  # ingest.images.pixel_spacing_mm
    channels: int
    target_mm: float
    short_side: int | None  # ingest.images.short_side: resize to this many pixels instead of target_mm
    antialias: bool


def _load_one(job: _Job, st: _Settings) -> dict:
    """Read, check and resample one image; raises ItemError naming the file."""
    img = read_image(job.file)
    pixels = conform_channels(img.pixels, st.channels, job.file)
    if job.csv_spacing is not None:
        spacing, source = (job.csv_spacing, job.csv_spacing), "labels_csv"
    elif img.spacing_mm is not None:
        spacing, source = img.spacing_mm, img.spacing_source
    elif st.default_spacing is not None:
        spacing, source = (st.default_spacing, st.default_spacing), "config"
    else:
        spacing, source = None, "none"
    if st.short_side is not None:
        grid = resize(pixels, short_side_size(pixels.shape[1:], st.short_side), st.antialias)
    elif spacing is not None:
        grid = resample_to_spacing(pixels, spacing, st.target_mm, st.antialias)
    else:
        grid = pixels
    return {"grid": grid, "spacing": spacing, "spacing_source": source, "format": img.file_format,
            "orig_shape": shape_text(pixels.shape[1:])}


def _load_chunk(chunk: tuple[list[_Job], _Settings]) -> list[tuple[int, bool, object]]:
    """Load a chunk of images in one worker task: ``(index, ok, info-or-message)`` per image (fewer,
    larger tasks keep the process-pool overhead off the ~1 ms each image takes)."""
    jobs, settings = chunk
    out = []
    for job in jobs:
        try:
            out.append((job.index, True, _load_one(job, settings)))
        except ItemError as exc:
            out.append((job.index, False, str(exc)))
    return out


def _settings(cfg: Config) -> _Settings:
    ic = cfg.ingest.images
    return _Settings(ic.pixel_spacing_mm, ic.channels, cfg.ingest.spacing_mm, ic.short_side, cfg.ingest.antialias_on)


def _load_all(cfg: Config, table, writer: GridShardWriter, result: StageResult) -> dict[int, dict]:
    """Load every image of ``table`` with the run's workers, each grid handed to ``writer`` as it arrives;
    returns the per-image info of those that loaded, by index."""
    jobs = [_Job(i, r.sample_id, r.file, None if np.isnan(r.spacing_csv) else float(r.spacing_csv)) for i, r in enumerate(table.itertuples())]
    settings = _settings(cfg)
    chunks = [(jobs[i : i + CHUNK], settings) for i in range(0, len(jobs), CHUNK)]
    info: dict[int, dict] = {}
    for item, ok, res in map_items(_load_chunk, chunks, cfg.run.workers, desc="ingest", key=lambda c: f"images {c[0][0].sample_id} ..."):
        if not ok:  # the worker itself failed (not one file's defect): a bug, or out of memory
            raise StageError(f"ingest: {item}: {res}")
        for index, loaded, value in res:
            sample = f"image {jobs[index].sample_id}"
            if loaded:
                writer.add(index, value.pop("grid"))
                info[index] = value
                result.ok(sample)
            else:
                writer.add(index, None)
                result.fail(sample, value)
    return info


def ingest(cfg: Config, run_dir: Path) -> StageResult:
    table, row_errors, counts = read_labels(cfg)
    result = StageResult()
    for item, msg in row_errors:
        result.fail(item, msg)
    if table.empty:
        raise StageError(f"ingest: no usable images ({len(row_errors)} error(s), "
                         f"{counts['left_out_by_label']} left out by label); see errors.csv")
    writer = GridShardWriter(run_dir, len(table), 2)
    loaded = _load_all(cfg, table, writer, result)
    shards = writer.close()
    if not loaded:
        raise StageError(f"ingest: none of the {len(table)} images could be read; see errors.csv")
    order = sorted(loaded)
    info = [loaded[i] for i in order]
    table = table.iloc[order].drop(columns=["spacing_csv"]).reset_index(drop=True).assign(  # keeps the labels order
        format=[r["format"] for r in info], orig_shape=[r["orig_shape"] for r in info],
        spacing_mm=[spacing_text(r["spacing"]) for r in info], spacing_source=[r["spacing_source"] for r in info],
        **writer.columns(order))
    table["file"] = [str(f) for f in table["file"]]
    result.outputs = [*shards, artifacts.write_table("arrays_table", run_dir, table)]
    result.counts = {"rows": counts["rows"], "images": int(len(table)), "normal": int((table.label == 0).sum()),
                     "anomalous": int((table.label == 1).sum()),
                     "left_out_by_label": counts["left_out_by_label"], "failed": len(result.errors),
                     "resampled": int(sum(r["spacing"] is not None for r in info))}
    return result
