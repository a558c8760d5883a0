"""Matplotlib figures: ROC curves, per-class score densities, galleries and 2D overlays (written atomically as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve  # noqa: E402

from pipeline.core import io  # noqa: E402


def save_png(fig, path: Path, dpi: int = 110, tight: bool = True) -> None:
    """Write a figure as PNG atomically (inside a run, confined to it), creating its folder, and close it."""
    if tight:
        fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    io.write_with(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
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
    save_png(fig, path)


def roc_band(labels: np.ndarray, scores: np.ndarray, n: int = 500, ci: float = 0.95, seed: int = 0, grid: np.ndarray | None = None):
    """Pointwise bootstrap band of the ROC: TPR at fixed FPRs over class-stratified resamples."""
    grid = np.linspace(0, 1, 101) if grid is None else grid
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    tprs = np.empty((n, len(grid)))
    for b in range(n):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        fpr, tpr, _ = roc_curve(labels[idx], scores[idx])
        tprs[b] = np.interp(grid, fpr, tpr)
    a = (1 - ci) / 2
    return grid, np.quantile(tprs, a, axis=0), np.quantile(tprs, 1 - a, axis=0)


def plot_roc_band(table: pd.DataFrame, score_col: str, metrics: dict, path: Path, n_boot: int = 500, seed: int = 0) -> None:
    """ROC of the primary score with its pointwise bootstrap 95% band."""
    y, s = table["label"].to_numpy(int), table[score_col].to_numpy(float)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, s)
        grid, lo, hi = roc_band(y, s, n_boot, seed=seed)
        ax.fill_between(grid, lo, hi, alpha=0.25, color="tab:blue", label="95% bootstrap band")
        m = metrics.get(score_col, {})
        ax.plot(fpr, tpr, color="tab:blue", label=f"{score_col}: AUROC {m.get('auroc', float('nan')):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 − specificity (FPR)", ylabel="sensitivity (TPR)", title=f"ROC with 95% band: {score_col}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8, loc="lower right")
    save_png(fig, path)


def plot_pr(table: pd.DataFrame, score_cols: list[str], metrics: dict, path: Path) -> None:
    """Precision-recall curves; the dotted line is the prevalence (chance)."""
    y = table["label"].to_numpy(int)
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for col in score_cols:
        s = table[col].to_numpy(float)
        ok = np.isfinite(s)  # e.g. the latent score of a model whose code density was never fitted
        if len(np.unique(y[ok])) < 2:
            continue
        prec, rec, _ = precision_recall_curve(y[ok], s[ok])
        ax.plot(rec, prec, label=f"{col}: AP {metrics.get(col, {}).get('auprc', float('nan')):.3f}")
    ax.axhline(y.mean() if len(y) else 0, color="k", ls=":", lw=0.8)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="upper right")
    save_png(fig, path)


def plot_gallery(images: list[np.ndarray], residuals: list[np.ndarray], titles: list[str], path: Path, heading: str) -> None:
    """Rows of cases: for 3D the mid-slices in three planes (axial, coronal, sagittal) of the patch
    and of its residual; for 2D the image and its residual. Arrays are (C, *spatial), zyx for 3D."""
    if not images:
        return
    dims = images[0].ndim - 1
    cols = 6 if dims == 3 else 2
    fig, axes = plt.subplots(len(images), cols, figsize=(1.5 * cols, 1.6 * len(images)), squeeze=False)
    rmax = max(float(np.max(r)) for r in residuals) or 1.0  # one residual scale for the whole gallery
    for r, (img, res, title) in enumerate(zip(images, residuals, titles)):
        views = _mid_slices(img) + _mid_slices(res)
        for c, (view, ax) in enumerate(zip(views, axes[r])):
            is_res = c >= len(views) // 2
            ax.imshow(view, cmap="magma" if is_res else "gray", vmin=0, vmax=(rmax if is_res else 1))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(("residual " if is_res else "")
                             + (("axial", "coronal", "sagittal")[c % 3] if dims == 3 else ("image" if not is_res else "")), fontsize=7)
        axes[r][0].set_ylabel(title, fontsize=6)
    fig.suptitle(heading, fontsize=9)
    save_png(fig, path)


def plot_overlay_2d(image: np.ndarray, reconstruction: np.ndarray | None, residual: np.ndarray, title: str, path: Path) -> None:
    """One 2D case side by side: image | reconstruction | residual heatmap (|x − reconstruction|,
    channel mean). Arrays are (C, rows, columns) in model range; RGB (C = 3) is shown in colour.
    Image and reconstruction share one display range (the image's), so they compare directly."""
    panels = [("image", image)] + ([("reconstruction", reconstruction)] if reconstruction is not None else [])
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.6 * (len(panels) + 1) + 0.6, 2.9), squeeze=False)
    lo, hi = float(np.min(image)), float(np.max(image))
    scale = (hi - lo) or 1.0
    for ax, (name, a) in zip(axes[0], panels):
        a = np.clip((np.asarray(a, float) - lo) / scale, 0, 1)
        ax.imshow(np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a[0], cmap=None if a.shape[0] == 3 else "gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
    ax = axes[0][-1]
    heat = ax.imshow(np.asarray(residual, float).mean(0), cmap="magma", vmin=0)
    ax.set_title("residual |x − recon|", fontsize=8)
    fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    for ax in axes[0]:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    save_png(fig, path)


def plot_image_maps(cases: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], path: Path, heading: str) -> None:
    """Rows of 2D cases ``(image (C, rows, columns), map (rows, columns), candidates (k, 2) as row, column, title)``:
    the image, and the image with its map laid over it (the map's top 10 % of values, one colour scale per
    row) and the candidates numbered by rank. RGB (C = 3) is shown in colour."""
    fig, axes = plt.subplots(len(cases), 2, figsize=(5.2, 2.6 * len(cases)), squeeze=False)
    for (image, amap, cands, title), (ax_img, ax_map) in zip(cases, axes):
        a = np.asarray(image, float)
        a = (a - a.min()) / ((a.max() - a.min()) or 1.0)
        shown = np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a[0]
        for ax in (ax_img, ax_map):
            ax.imshow(shown, cmap=None if a.shape[0] == 3 else "gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        m = np.asarray(amap, float)
        floor = float(np.quantile(m, 0.9))
        heat = ax_map.imshow(np.ma.masked_less(m, floor), cmap="magma", alpha=0.6, vmin=floor, vmax=float(m.max()) or 1.0)
        for rank, (r, c) in enumerate(np.asarray(cands, int)[:5], 1):
            ax_map.plot(c, r, "+", color="cyan", ms=9, mew=1.2)
            ax_map.annotate(str(rank), (c, r), color="cyan", fontsize=6, xytext=(3, 3), textcoords="offset points")
        fig.colorbar(heat, ax=ax_map, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
        ax_img.set_ylabel(title, fontsize=7)
    axes[0][0].set_title("image", fontsize=8)
    axes[0][1].set_title("map (top 10 %) and candidates", fontsize=8)
    fig.suptitle(heading, fontsize=8)
    save_png(fig, path)


def _mid_slices(a: np.ndarray) -> list[np.ndarray]:
    """Channel-mean mid-slices: 3D (z, y, x) → axial, coronal, sagittal; 2D → the image."""
    a = np.asarray(a, float).mean(0)
    if a.ndim == 2:
        return [a]
    z, y, x = (n // 2 for n in a.shape)
    return [a[z], a[:, y][::-1], a[:, :, x][::-1]]


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
    save_png(fig, path)


def plot_roc_curves(curves: list[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str, legend_title: str = "AUROC") -> None:
    """Overlaid ROC curves of ``(label, labels, scores)`` triples (non-finite scores dropped); the legend gives each AUROC."""
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    for label, y, s in curves:
        y, s = np.asarray(y, int), np.asarray(s, float)
        ok = np.isfinite(s)
        if len(np.unique(y[ok])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y[ok], s[ok])
        ax.plot(fpr, tpr, lw=1.2, label=f"{label}: {roc_auc_score(y[ok], s[ok]):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 − specificity (FPR)", ylabel="sensitivity (TPR)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=6.5, loc="lower right", title=legend_title, title_fontsize=7)
    save_png(fig, path)


def plot_density_grid(panels: list[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """One small histogram per ``(title, labels, scores)``: normal vs anomalous densities (0.5-99.5% range)."""
    n = len(panels)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows), squeeze=False)
    for ax, (name, y, s) in zip(axes.ravel(), panels):
        y, s = np.asarray(y), np.asarray(s, float)
        ok = np.isfinite(s)
        lo, hi = np.quantile(s[ok], [0.005, 0.995])
        bins = np.linspace(lo, hi, 40)
        for lab, colour, text in ((0, "tab:blue", "normal"), (1, "tab:red", "anomaly")):
            ax.hist(np.clip(s[ok & (y == lab)], lo, hi), bins=bins, density=True, alpha=0.5, color=colour, label=text)
        ax.set_title(name[:48], fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_png(fig, path)


def plot_nodule_views(ct_zyx: np.ndarray, map_zyx: np.ndarray, centres_ijk: np.ndarray, candidates_ijk: np.ndarray, titles: list[str],
                      path: Path, half: int = 40) -> None:
    """One row per nodule: axial, coronal and sagittal slices through its centre, CT (lung window) under the anomaly map.

    Arrays are the CT and the map on the same grid (zyx); centres and candidates are voxel indices
    (i, j, k). The map is shown above its 95th percentile (transparent below); a cross marks the
    nodule centre, circles the candidates within 2 voxels of the slice. Each panel is ±``half`` voxels.
    """
    rows = len(centres_ijk)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3.2 * rows), squeeze=False)
    pos = map_zyx[map_zyx > 0]
    floor, vmax = (float(np.percentile(pos, 95)), float(np.percentile(pos, 99.9))) if len(pos) else (0.0, 1.0)
    for r, ((i, j, k), title) in enumerate(zip(centres_ijk, titles)):
        views = (("axial", ct_zyx[k], map_zyx[k], (i, j), candidates_ijk[np.abs(candidates_ijk[:, 2] - k) <= 2][:, [0, 1]]),
                 ("coronal", ct_zyx[:, j], map_zyx[:, j], (i, k), candidates_ijk[np.abs(candidates_ijk[:, 1] - j) <= 2][:, [0, 2]]),
                 ("sagittal", ct_zyx[:, :, i], map_zyx[:, :, i], (j, k), candidates_ijk[np.abs(candidates_ijk[:, 0] - i) <= 2][:, [1, 2]]))
        for ax, (name, img, amap, centre, cands) in zip(axes[r], views):
            _nodule_panel(ax, img, amap, centre, cands, half, floor, vmax, "upper" if name == "axial" else "lower")
            ax.set_title(name + (f": {title}" if name == "axial" else ""), fontsize=7)
    save_png(fig, path)


def _nodule_panel(ax, img: np.ndarray, amap: np.ndarray, centre: tuple[int, int], cands: np.ndarray, half: int, floor: float, vmax: float,
                  origin: str) -> None:
    """One slice (rows = v, columns = u) around ``centre`` = (u, v): CT, the map above ``floor``, the centre and the candidates."""
    u, v = centre
    lo_u, lo_v = max(0, u - half), max(0, v - half)
    img, amap = img[lo_v:v + half, lo_u:u + half], amap[lo_v:v + half, lo_u:u + half]
    ax.imshow(img, cmap="gray", vmin=-1350, vmax=150, origin=origin)
    ax.imshow(np.ma.masked_less_equal(amap, floor), cmap="hot", alpha=0.6, vmin=floor, vmax=vmax, origin=origin)
    ax.plot([u - lo_u], [v - lo_v], "c+", ms=14, mew=1.5)
    inside = (cands[:, 0] >= lo_u) & (cands[:, 0] < lo_u + img.shape[1]) & (cands[:, 1] >= lo_v) & (cands[:, 1] < lo_v + img.shape[0])
    ax.plot(cands[inside, 0] - lo_u, cands[inside, 1] - lo_v, "o", mfc="none", mec="lime", ms=9)
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim((img.shape[0] - 0.5, -0.5) if origin == "upper" else (-0.5, img.shape[0] - 0.5))
    ax.set_xticks([]), ax.set_yticks([])
