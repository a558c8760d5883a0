"""Split stage: ``samples.csv`` → ``splits.csv``, stratified by label and grouped by patient.

The rules (holdout, k-fold, predefined, fixed-size draws, spatial blocks for a single patient,
buffers around held-out cubes, contamination) and the leakage assertion are in
:mod:`preprocessing.grouped_splits`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from pipeline.core.stage import Stage


def run(cfg: Config, run_dir: Path) -> StageResult:
    """Assign every sample to train / val / test / buffer / unused and write ``splits.csv``.

    Args:
        cfg: the validated run config.
        run_dir: the run directory; the stage reads its upstream artifacts there and writes its own.

    Returns:
        counts, per-item errors and the files written (``splits.csv``), recorded in the manifest.
    """
    from preprocessing import grouped_splits  # scikit-learn loads when the stage runs: see pipeline/core/stage.py

    return grouped_splits.split(cfg, run_dir)


STAGE = Stage(
    name="split",
    run=run,
    reads=("split", "run.seed"),
    after=("extract",),
    outputs=("splits",),
    help="stratified, patient-grouped train/val/test (holdout or k-fold)",
)
