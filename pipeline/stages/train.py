"""Train stage: normal training cubes → the model folder ``model/`` (weights, model.json, manifest, curves).

Random sub-patches with flips (MONAI transforms), early stopping and model selection on normal
validation data only, resumable after a kill (:mod:`models.training`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from pipeline.core.stage import Stage


def run(cfg: Config, run_dir: Path) -> StageResult:
    """Fit ``cfg.model`` on the run's training split.

    Args:
        cfg: the validated run config.
        run_dir: the run directory; the stage reads its upstream artifacts there and writes its own.

    Returns:
        counts, per-item errors and the files written (the model folder and its curves; the summary has the selected epoch), recorded in the manifest.
    """
    from models import training  # torch and MONAI load when the stage runs: see pipeline/core/stage.py

    return training.run(cfg, run_dir)


STAGE = Stage(
    name="train",
    run=run,
    reads=("model", "train", "extract", "run.seed", "run.device"),  # extract: its normalisation is fitted here
    after=("extract", "split"),
    outputs=("model_dir",),
    learns=True,
    help="fit the detector on normal training samples (model selection on normal validation data)",
)
