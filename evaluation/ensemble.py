"""An unsupervised ensemble: several detectors' scores of the same samples → one ``ensemble`` score.

Each member is a finished run on the same data (same samples and splits: the same protocol,
seed or fold). Its primary score becomes a p-value under that run's own normal validation scores
(the calibration the score stage already fitted, ``p_value`` in its ``scores.csv``; the empirical
p-value (1 + #{normal val ≥ s}) / (n + 1) when a run has none). The p-values are combined with
Fisher's method, ``ensemble = −2 Σ log p_i`` (or the mean of ``−log p_i``), so a sample that is
unlikely under several detectors' normal distributions ranks highest.

No label of the test split is used, and the members are chosen before any test result (they are
written in the protocol config; see docs/BENCHMARK_NOTES.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.metrics import detection_metrics
from pipeline.core import artifacts, io
from pipeline.core.errors import StageError

METHODS = ("fisher", "mean_neglog")
P_FLOOR = 1e-300  # a p-value of exactly 0 (a Gamma tail underflow) would make −log p infinite


def empirical_p(scores: np.ndarray, normal_val: np.ndarray) -> np.ndarray:
    """(1 + #{v ≥ s}) / (n + 1) for each score s against the normal validation scores v."""
    ref = np.sort(np.asarray(normal_val, float)[np.isfinite(normal_val)])
    if not len(ref):
        raise StageError("ensemble: a member has no finite normal validation scores to calibrate against")
    n_ge = len(ref) - np.searchsorted(ref, np.asarray(scores, float), side="left")
    return (1.0 + n_ge) / (len(ref) + 1.0)


def combine(p: np.ndarray, method: str = "fisher") -> np.ndarray:
    """Combine member p-values ``p`` (members × samples) into one score per sample (higher = more anomalous)."""
    if method not in METHODS:
        raise StageError(f"ensemble method {method!r}: choose one of {', '.join(METHODS)}")
    logp = np.log(np.clip(np.asarray(p, float), P_FLOOR, 1.0))
    return -2.0 * logp.sum(0) if method == "fisher" else -logp.mean(0)


def member_p_values(run_dir: Path) -> pd.Series:
    """The p-value of every scored sample of one member run, indexed by sample ID."""
    table = artifacts.read_scores(run_dir)
    if "p_value" in table.columns and table["p_value"].notna().all():
        return table.set_index("sample_id")["p_value"].astype(float)
    metrics = artifacts.read_json("metrics", run_dir) or {}
    primary = metrics.get("primary_score") or (artifacts.read_json("calibration", run_dir) or {}).get("score")
    if primary not in table.columns:
        raise StageError(f"{run_dir}: cannot tell the member's primary score (no p_value column, metrics.json or calibration.json)")
    normal_val = table.loc[(table["split"] == "val") & (table["label"] == 0), primary].to_numpy(float)
    return pd.Series(empirical_p(table[primary].to_numpy(float), normal_val), index=table["sample_id"].to_numpy())


def ensemble_scores(run_dirs: list[Path], method: str = "fisher") -> pd.DataFrame:
    """The first member's sample columns (IDs, label, split, ...) with ``ensemble`` and each member's ``p_<k>``.

    Every member must have scored the same samples (runs of one protocol repeat).
    """
    if not run_dirs:
        raise StageError("ensemble: no member runs")
    base = artifacts.read_scores(run_dirs[0])
    meta = [c for c in ("sample_id", "patient_id", "series_uid", "kind", "label", "class", "split") if c in base.columns]
    table = base[meta].copy()
    ps = []
    for k, run in enumerate(run_dirs):
        p = member_p_values(run)
        missing = set(table["sample_id"]) - set(p.index)
        if missing:
            raise StageError(f"ensemble: member {run} did not score {len(missing)} sample(s) of {run_dirs[0]} (e.g. {sorted(missing)[0]})")
        ps.append(p.loc[table["sample_id"]].to_numpy(float))
        table[f"p_{k}"] = ps[-1]
    table["ensemble"] = combine(np.stack(ps), method)
    return table


def write_ensemble(run_dirs: list[Path], out: Path, method: str = "fisher", split: str = "test", n_boot: int = 1000) -> dict:
    """``pipeline ensemble``: ``scores.csv`` (members' p-values and ``ensemble``) and ``metrics.json`` under ``out``."""
    table = ensemble_scores(run_dirs, method)
    test = table[table["split"] == split]
    metrics = {"members": [str(r) for r in run_dirs], "method": method, "split": split, "primary_score": "ensemble"}
    if test["label"].nunique() == 2:
        metrics["primary"] = detection_metrics(test["label"].to_numpy(), test["ensemble"].to_numpy(), n_boot, 0.95, 0,
                                               test["patient_id"].to_numpy(str))
    with io.confine(out):
        artifacts.write_table("scores", out, table)
        artifacts.write_json("metrics", out, metrics)
    return metrics
