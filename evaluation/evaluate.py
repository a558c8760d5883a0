"""Evaluate stage: ``metrics.json``, ``roc.png``, ``score_density.png`` and NIfTI overlays.

Metrics are computed on the configured split (``test`` by default) for every score column;
``evaluate.score`` names the primary one. Overlays: for each CT series,
``overlays/<series>_residual.nii.gz`` (|x − reconstruction| of each scored cube's centre patch,
in normalised intensity units) and ``overlays/<series>_score.nii.gz`` (the primary score painted
over each cube's extent), both on the grid of ``volumes/<series>.nii.gz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from evaluation.metrics import DEFINITIONS, detection_metrics, patient_level_auroc, per_class_auroc
from evaluation.overlays import nodule_mask, paint, write_overlay
from evaluation.plots import plot_density, plot_gallery, plot_pr, plot_roc, plot_roc_band
from evaluation.report import write_report
from models.score import RESIDUALS_NPZ, centre_patch, load_scores, model_path
from pipeline import io
from pipeline.config import Config
from pipeline.errors import StageError
from pipeline.results import StageResult
from preprocessing.extract import load_cubes, load_samples
from preprocessing.ingest import volume_path

META_COLS = {"sample_id", "patient_id", "series_uid", "kind", "label", "split", "p_value", "flagged"}


def run(cfg: Config, run_dir: Path) -> StageResult:
    ec = cfg.evaluate
    table = load_scores(run_dir)
    score_cols = [c for c in table.columns if c not in META_COLS]
    if ec.score not in score_cols:
        raise StageError(f"evaluate.score: {ec.score!r} is not a score column; available: {', '.join(score_cols)}")
    test = table[table["split"] == ec.split]
    groups = test["patient_id"].to_numpy(str)
    per_score = {c: detection_metrics(test["label"].to_numpy(), test[c].to_numpy(), ec.bootstrap, ec.ci, cfg.run.seed, groups) for c in score_cols}
    samples = load_samples(run_dir).set_index("sample_id")  # read once: per-class labels and overlay geometry
    classes = class_column(samples, test)
    for c in score_cols:
        if "auroc" in per_score[c]:
            per_score[c]["patient_level"] = patient_level_auroc(test["label"].to_numpy(), test[c].to_numpy(), groups)
            if classes is not None and len(np.unique(classes[test["label"].to_numpy() == 1])) > 1:
                per_score[c]["per_class"] = per_class_auroc(classes, test["label"].to_numpy(), test[c].to_numpy())
    metrics = {
        "primary_score": ec.score,
        "split": ec.split,
        "primary": per_score[ec.score],
        "scores": per_score,
        "definitions": DEFINITIONS | {"score_orientation": "every score: higher = more anomalous"},
    }
    io.write_json(run_dir / "metrics.json", metrics)
    outputs = [run_dir / "metrics.json"]
    result = StageResult(counts={"evaluated": len(test), "anomalous": int(test["label"].sum())}, extra={"auroc": per_score[ec.score].get("auroc")})
    if ec.overlays and cfg.ingest.format == "dicom":
        outputs += write_overlays(run_dir, table, ec.score, result, samples)
    if ec.figures:
        outputs += write_figures_and_report(cfg, run_dir, table, test, score_cols, per_score, metrics)
    result.outputs = outputs
    return result


def write_figures_and_report(cfg: Config, run_dir: Path, table, test, score_cols: list[str], per_score: dict, metrics: dict) -> list[Path]:
    """ROC, ROC band, precision-recall, density, galleries and ``report.html``."""
    ec = cfg.evaluate
    plot_roc(test, [ec.score] + [c for c in score_cols if c != ec.score], per_score, run_dir / "roc.png", f"ROC on {ec.split} split (n={len(test)})")
    plot_density(test, ec.score, run_dir / "score_density.png")
    plot_roc_band(test, ec.score, per_score, run_dir / "roc_band.png", min(ec.bootstrap, 500) or 100, cfg.run.seed)
    plot_pr(test, [ec.score] + [c for c in score_cols if c != ec.score], per_score, run_dir / "pr.png")
    outputs = [run_dir / n for n in ("roc.png", "score_density.png", "roc_band.png", "pr.png")]
    outputs += write_galleries(cfg, run_dir, test, ec.score)
    curves = (model_path(cfg, run_dir).parent / "curves.png")
    figures = [(run_dir / "roc.png", "ROC curves, all scores"), (run_dir / "roc_band.png", "ROC of the primary score with its 95% bootstrap band"),
               (run_dir / "pr.png", "precision-recall"), (run_dir / "score_density.png", "score densities by class"), (curves, "training curves"),
               (run_dir / "gallery_most_anomalous.png", "gallery: most anomalous test cases"), (run_dir / "gallery_least_anomalous.png", "gallery: least anomalous test cases")]
    outputs.append(write_report(run_dir, cfg.to_dict(), metrics, table, figures))
    return outputs


def write_galleries(cfg: Config, run_dir: Path, test, score_col: str, n: int = 6) -> list[Path]:
    """Mid-slices (three planes for 3D) of the centre patch and its residual for the n most and least anomalous test cases."""
    with np.load(run_dir / RESIDUALS_NPZ) as z:
        residual, ids = z["residual"], z["sample_id"]
    row_of = {s: i for i, s in enumerate(ids)}
    cube_ids, cubes = load_cubes(run_dir, cfg.extract.hu_window, cfg.extract.normalise)
    cube_row = {s: i for i, s in enumerate(cube_ids)}
    patch = residual.shape[-1]
    written = []
    ordered = test.sort_values(score_col, ascending=False)
    for name, part in (("most", ordered.head(n)), ("least", ordered.tail(n).iloc[::-1])):
        imgs = [centre_patch(cubes[[cube_row[s]]], patch)[0] for s in part["sample_id"]]
        res = [residual[row_of[s]].astype(np.float32) for s in part["sample_id"]]
        titles = [f"{'anomaly' if l else 'normal'}\n{score_col}={v:.4g}" for l, v in zip(part["label"], part[score_col])]
        path = run_dir / f"gallery_{name}_anomalous.png"
        plot_gallery(imgs, res, titles, path, f"{name} anomalous {cfg.evaluate.split} cases ({score_col})")
        written.append(path)
    return written


def class_column(samples, test) -> np.ndarray | None:
    """Original class labels of the test samples (array datasets), for per-class AUROC."""
    if "class" not in samples.columns:
        return None
    return samples.loc[test["sample_id"], "class"].to_numpy()


def write_overlays(run_dir: Path, table, score_col: str, result: StageResult, samples) -> list[Path]:
    """Residual and score overlays per series, on the ingested CT's grid."""
    with np.load(run_dir / RESIDUALS_NPZ) as z:
        residual, ids, offset = z["residual"], z["sample_id"], int(z["offset"])
    row_of = {s: i for i, s in enumerate(ids)}
    written = []
    for series, grp in table.groupby("series_uid"):
        if not isinstance(series, str) or not series:  # array datasets have no CT grid
            continue
        ct_path = volume_path(run_dir, series)
        if not ct_path.exists():
            result.fail(f"series {series}", f"overlay skipped: ingested CT {ct_path} not found")
            continue
        ct = sitk.ReadImage(str(ct_path))
        shape = ct.GetSize()[::-1]
        geo = samples.loc[grp["sample_id"]]
        starts = geo[["start_i", "start_j", "start_k"]].to_numpy(int)
        res = [residual[row_of[s], 0] for s in grp["sample_id"]]
        out_res = run_dir / "overlays" / f"{series}_residual.nii.gz"
        write_overlay(ct, paint(shape, starts + offset, res), out_res)
        size = geo["size"].to_numpy(int)
        values = grp[score_col].to_numpy(float)
        blocks = [np.full((n, n, n), v, np.float32) for n, v in zip(size, values)]
        out_score = run_dir / "overlays" / f"{series}_score.nii.gz"
        write_overlay(ct, paint(shape, starts, blocks, fill=float(np.nanmin(values))), out_score)
        written += [out_res, out_score]
        nod = geo[geo["kind"] == "nodule"]
        if len(nod):
            out_mask = run_dir / "overlays" / f"{series}_nodules.nii.gz"
            write_overlay(ct, nodule_mask(shape, nod[["i", "j", "k"]].to_numpy(int)), out_mask)
            written.append(out_mask)
    return written
