"""Matplotlib figures: ROC curves and per-class score densities (written atomically as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from pipeline import io  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    io.write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_roc(table: pd.DataFrame, score_cols: list[str], metrics: dict, path: Path, title: str = "") -> None:
    """One ROC curve per score column; the legend gives AUROC and its CI."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    y = table["label"].to_numpy(int)
    for col in score_cols:
        s = table[col].to_numpy(float)
        ok = np.isfinite(s)
        if len(np.unique(y[ok])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y[ok], s[ok])
        m = metrics.get(col, {})
        ci = m.get("auroc_ci")
        label = f"{col}: {m.get('auroc', float('nan')):.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 − specificity (FPR)", ylabel="sensitivity (TPR)", title=title or "ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right", title="AUROC [95% CI]", title_fontsize=7)
    _save(fig, path)


def plot_density(table: pd.DataFrame, score_col: str, path: Path) -> None:
    """Histogram densities of one score, per class, with individual anomalies as a rug."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    s = table[score_col].to_numpy(float)
    y = table["label"].to_numpy(int)
    ok = np.isfinite(s)
    bins = np.histogram_bin_edges(s[ok], bins=30) if ok.any() else 10
    for lab, name, colour in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red")):
        v = s[ok & (y == lab)]
        if len(v) > 1:
            ax.hist(v, bins=bins, density=True, alpha=0.5, color=colour, label=f"{name} (n={len(v)})")
        if len(v):
            ax.plot(v, np.zeros_like(v), "|", color=colour, ms=12)
    ax.set(xlabel=f"{score_col} (higher = more anomalous)", ylabel="density", title=f"{score_col} by class")
    ax.legend(fontsize=8)
    _save(fig, path)
