"""Ingest stage: the configured input (DICOM CT tree, array dataset, or folder of 2D images) → 1 mm grids.

Writes ``volumes/<series>.nii.gz`` and ``series.csv`` for DICOM CT (:mod:`preprocessing.dicom_ingest`),
or ``grids/`` shards and ``arrays.csv`` for array datasets (:mod:`preprocessing.arrays`) and image
folders (:mod:`preprocessing.images`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from pipeline.core.stage import Stage


def run(cfg: Config, run_dir: Path) -> StageResult:
    """Ingest ``cfg.ingest.input`` with the reader of ``cfg.ingest.format``.

    Args:
        cfg: the validated run config.
        run_dir: the run directory; the stage reads its upstream artifacts there and writes its own.

    Returns:
        counts, per-item errors and the files written (``series.csv`` and volumes, or the ``grids/`` shards and
        ``arrays.csv``), recorded in the manifest.
    """
    # The reader of the configured format is imported when the stage runs (pydicom, SimpleITK,
    # Pillow): a light stage module keeps `pipeline validate` fast (pipeline/core/stage.py).
    if cfg.ingest.format == "arrays":
        from preprocessing import arrays

        return arrays.ingest(cfg, run_dir)
    if cfg.ingest.format == "images":
        from preprocessing import images

        return images.ingest(cfg, run_dir)
    from preprocessing import dicom_ingest

    return dicom_ingest.ingest(cfg, run_dir)


STAGE = Stage(
    name="ingest",
    run=run,
    reads=("ingest",),
    inputs=("ingest.input", "ingest.images.labels"),
    outputs=("series", "volume", "ingest_record", "grids", "arrays_table"),
    help="DICOM CT series, array datasets or 2D images → resampled 1 mm grids",
)
