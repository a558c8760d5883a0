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
from evaluation.overlays import paint, write_overlay
from evaluation.plots import plot_density, plot_roc
from models.score import RESIDUALS_NPZ, load_scores
from pipeline import io
from pipeline.config import Config
from pipeline.errors import StageError
from pipeline.results import StageResult
from preprocessing.extract import load_samples
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
    classes = class_column(run_dir, test)
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
    plot_roc(test, [ec.score] + [c for c in score_cols if c != ec.score], per_score, run_dir / "roc.png", f"ROC on {ec.split} split (n={len(test)})")
    plot_density(test, ec.score, run_dir / "score_density.png")
    outputs += [run_dir / "roc.png", run_dir / "score_density.png"]
    result = StageResult(counts={"evaluated": len(test), "anomalous": int(test["label"].sum())})
    if ec.overlays and cfg.ingest.format == "dicom":
        outputs += write_overlays(run_dir, table, ec.score, result)
    result.outputs = outputs
    result.extra["auroc"] = per_score[ec.score].get("auroc")
    return result


def class_column(run_dir: Path, test) -> np.ndarray | None:
    """Original class labels of the test samples (array datasets), for per-class AUROC."""
    samples = load_samples(run_dir)
    if "class" not in samples.columns:
        return None
    return samples.set_index("sample_id").loc[test["sample_id"], "class"].to_numpy()


def write_overlays(run_dir: Path, table, score_col: str, result: StageResult) -> list[Path]:
    """Residual and score overlays per series, on the ingested CT's grid."""
    samples = load_samples(run_dir).set_index("sample_id")
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
    return written
