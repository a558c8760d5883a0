"""Score stage: the trained model folder + the run's patches → ``scores.csv``, ``residuals.npz``, ``calibration.json``.

Every chosen sample's centre patch is scored (:mod:`models.scoring`, :mod:`models.batch_scoring`):
one column per score component of the model, higher = more anomalous; the primary score is
calibrated to p-values on normal validation data. ``score.model`` scores with another run's
model folder (``pipeline score --model DIR``): no train stage is needed then.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from pipeline.core.stage import Stage


def run(cfg: Config, run_dir: Path) -> StageResult:
    """Score the run's patches with the configured model folder.

    Args:
        cfg: the validated run config.
        run_dir: the run directory; the stage reads its upstream artifacts there and writes its own.

    Returns:
        counts, per-item errors and the files written (``scores.csv``, ``residuals.npz`` and ``calibration.json``), recorded in the manifest.
    """
    from models import scoring  # torch loads when the stage runs: see pipeline/core/stage.py

    return scoring.run(cfg, run_dir)


def external_model(cfg: Config) -> tuple[str, ...]:
    """The upstream stages a config does not need when it scores with another run's model folder (``score.model``): ``train``."""
    return ("train",) if cfg.score.model is not None else ()


STAGE = Stage(
    name="score",
    run=run,
    reads=("score", "run.seed", "evaluate.score"),
    after=("train", "extract", "split"),
    unless=external_model,
    inputs=("score.model",),
    outputs=("scores", "residuals", "calibration"),
    help="score every sample's centre patch (ELBO, latent search, ...), p-values from normal validation data",
)
