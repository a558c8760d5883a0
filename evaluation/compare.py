"""``pipeline compare RUN ...``: one table and overlaid ROC curves across finished runs.

Each run contributes its primary score's metrics (from ``metrics.json``) and its ROC on the
evaluated split (from ``scores.csv``). Rows also carry the model name and seed from the run's
manifest, so runs that differ by model or seed can be told apart.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from pipeline.core import artifacts, io  # noqa: E402
from pipeline.core.errors import StageError  # noqa: E402


def compare_runs(runs: list[Path], out: Path) -> pd.DataFrame:
    """Primary-score metrics of each finished run in one table, and their ROC curves overlaid; written under ``out``."""
    rows, curves = [], []
    for run in runs:
        metrics = artifacts.read_json("metrics", run)
        if metrics is None:
            raise StageError(f"{run}: no metrics.json (run the evaluate stage first)")
        manifest = artifacts.read_json("manifest", run) or {}
        cfg = manifest.get("config", {})
        prim, score = metrics["primary"], metrics["primary_score"]
        ci = prim.get("auroc_ci") or [None, None]
        rows.append({"run": str(run), "model": cfg.get("model", {}).get("name"), "seed": cfg.get("run", {}).get("seed"), "score": score,
                     "n_normal": prim.get("n_normal"), "n_anomalous": prim.get("n_anomalous"), "auroc": prim.get("auroc"),
                     "auroc_ci_low": ci[0], "auroc_ci_high": ci[1], "auprc": prim.get("auprc"), "sens_at_95_spec": prim.get("sens_at_95_spec")})
        scores = artifacts.read_scores(run)
        test = scores[scores["split"] == metrics["split"]]
        if test["label"].nunique() == 2:
            fpr, tpr, _ = roc_curve(test["label"], test[score])
            curves.append((f"{run.name} ({rows[-1]['model']}, {score}): {prim['auroc']:.3f}", fpr, tpr))
    table = pd.DataFrame(rows)
    with io.confine(out):
        _write(out, table, curves)
    return table


def _write(out: Path, table: pd.DataFrame, curves: list) -> None:
    io.write_csv(out / "comparison.csv", table)
    io.write_text(out / "comparison.md", table.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else table.to_string(index=False))
    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    for label, fpr, tpr in curves:
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 − specificity (FPR)", ylabel="sensitivity (TPR)", title="ROC across runs", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    io.write_with(out / "roc_compare.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
