"""Extract stage: ingested data → ``cubes/*.npy`` shards (raw patches in stored units) and ``samples.csv``.

DICOM CT: a ``cube_size``³ cube at every nodule of the table, plus optional background cubes of
lung tissue (:mod:`preprocessing.cube_extract`). Array datasets and image folders: the centre
``cube_size`` crop of every image (:func:`preprocessing.arrays.extract`). Intensities are
normalised when the patches are loaded, with the normalisation the model checkpoint records.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from pipeline.core.stage import Stage


def run(cfg: Config, run_dir: Path) -> StageResult:
    """Cut the patches of ``cfg.ingest.format``'s data.

    Args:
        cfg: the validated run config.
        run_dir: the run directory; the stage reads its upstream artifacts there and writes its own.

    Returns:
        counts, per-item errors and the files written (the ``cubes/`` shards and ``samples.csv``), recorded in the manifest.
    """
    # imported when the stage runs (SimpleITK, SciPy): see pipeline/core/stage.py
    if cfg.ingest.format in ("arrays", "images"):  # both write the grids/ + arrays.csv contract
        from preprocessing import arrays

        return arrays.extract(cfg, run_dir)
    from preprocessing import cube_extract

    return cube_extract.extract(cfg, run_dir)


STAGE = Stage(
    name="extract",
    run=run,
    reads=("extract", "run.seed"),
    after=("ingest",),
    inputs=("extract.nodules",),
    outputs=("cubes", "samples"),
    help="nodule table + volumes (or images) → 32³ cubes / centre crops",
)
