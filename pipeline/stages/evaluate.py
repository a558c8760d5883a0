"""Evaluate stage: ``scores.csv`` → ``metrics.json``, figures, ``report.html`` and overlays.

Metrics of every score on the configured split (AUROC with bootstrap CI, AUPRC, sensitivity at
fixed specificity, the seeds' logistic-regression protocol); NIfTI overlays on each CT's own grid;
PNG overlays for 2D inputs (:mod:`evaluation.evaluator`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from pipeline.core.stage import Stage


def run(cfg: Config, run_dir: Path) -> StageResult:
    """Evaluate the run's scores.

    Args:
        cfg: the validated run config.
        run_dir: the run directory; the stage reads its upstream artifacts there and writes its own.

    Returns:
        counts, per-item errors and the files written (``metrics.json``, figures, ``report.html``, overlays), recorded in the manifest.
    """
    from evaluation import evaluator  # matplotlib, scikit-learn and SimpleITK load when the stage runs: see pipeline/core/stage.py

    return evaluator.evaluate(cfg, run_dir)


STAGE = Stage(
    name="evaluate",
    run=run,
    reads=("evaluate", "run.seed"),
    after=("score", "map", "extract", "ingest"),
    outputs=("metrics", "report", "figure", "overlay_residual", "overlay_score", "overlay_nodules", "overlay_png"),
    help="metrics.json (AUROC with CI, AUPRC, ...), ROC and density plots, report.html, NIfTI/PNG overlays",
)
