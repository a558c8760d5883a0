"""Map stage: the trained detector swept over every CT's lung → anomaly maps, candidates, Slicer markups;
over every whole 2D image → its map on the image's grid (``maps/``) and candidates (:mod:`evaluation.image_map`).

Writes ``overlays/<series>_anomaly.nii.gz`` (voxel map) and ``overlays/<series>_anomaly_p.nii.gz``
(window scores as p-values on normal validation windows), both in the CT's own geometry,
``candidates.csv`` and ``candidates.mrk.json`` (and one markups file per series), the window
calibration and ``map_metrics.json`` (nodule ranks, FROC). See :mod:`evaluation.anomaly_map`.
The evaluate stage puts the metrics and the nodule views into ``metrics.json`` and ``report.html``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from pipeline.core.stage import Stage
from pipeline.stages.score import external_model


def run(cfg: Config, run_dir: Path) -> StageResult:
    """Map every ingested CT series, or every 2D image of ``map.split``, with the run's model (nothing for 3D array
    datasets, or with ``map.enabled: false``).

    Args:
        cfg: the validated run config (``map`` section; the model folder as for the score stage).
        run_dir: the run directory: volumes, splits and cubes are read there, maps and candidates written.

    Returns:
        counts (series, windows, windows outside the lung, candidates), the files written, the pooled FROC.
    """
    from evaluation import anomaly_map  # torch, MONAI and SciPy load when the stage runs: see pipeline/core/stage.py

    return anomaly_map.map_run(cfg, run_dir)


STAGE = Stage(
    name="map",
    run=run,
    reads=("map", "run.seed", "run.device", "evaluate.score", "evaluate.split", "score", "extract", "ingest.spacing_mm"),
    # score: calibration settings; extract: the lung threshold; evaluate.split: the 2D images mapped; ingest.spacing_mm: their grid
    after=("ingest", "extract", "split", "train"),
    unless=external_model,
    inputs=("extract.nodules", "score.model"),
    outputs=("anomaly_map", "anomaly_p", "series_markups", "candidates", "markups", "map_calibration", "map_metrics",
             "image_map", "image_grid", "map_images"),
    help="anomaly maps (MONAI sliding windows): whole-scan over the lung with candidates, Slicer markups, nodule ranks and FROC; "
         "2D: whole-image maps with their local maxima",
)
