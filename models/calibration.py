"""Thresholds and p-values from normal validation scores only (Lu & Xu 2018, §4.2, https://arxiv.org/abs/1807.01349).

- ``gamma``: fit a Gamma distribution (scipy) to the normal validation scores after shifting them
  to be positive (shift = min − 5% of the range); p(s) = 1 − F_Γ(s − shift).
- ``percentile``: the empirical p-value (1 + #{normal ≥ s}) / (n + 1) of the validation scores.

A sample is flagged when p < ``fpr`` (the target false-positive rate), or, with Benjamini-Hochberg
for batch screening, when its BH-adjusted p-value (scipy ``false_discovery_control``) is < ``fpr``.
The calibration is stored as ``calibration.json`` next to the model's run and reused when new
data are scored with that model (checked by :func:`check_calibration` first: it is an input).
It lives with the models because the score stage writes ``p_value`` and ``flagged`` into
``scores.csv`` (the layers run one way: evaluation may use models, not the reverse).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def fit_calibration(normal_scores: np.ndarray, method: str = "gamma", fpr: float = 0.05, bh: bool = False) -> dict:
    s = np.asarray(normal_scores, float)
    s = s[np.isfinite(s)]
    if len(s) < 5:
        raise ValueError(f"calibration needs at least 5 finite normal validation scores, got {len(s)}")
    calib = {"method": method, "fpr": fpr, "bh": bh, "n_normal": int(len(s))}
    if method == "gamma":
        span = float(s.max() - s.min()) or 1.0
        shift = float(s.min() - 0.05 * span)
        a, _, scale = stats.gamma.fit(s - shift, floc=0)
        calib.update(shift=shift, shape=float(a), scale=float(scale), threshold=float(shift + stats.gamma.isf(fpr, a, scale=scale)))
        calib["ks_statistic"] = float(stats.kstest(s - shift, "gamma", args=(a, 0, scale)).statistic)
    elif method == "percentile":
        calib.update(normal_scores=np.sort(s).tolist(), threshold=float(np.quantile(s, 1 - fpr)))
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    return calib


def check_calibration(calib: dict, columns: list[str]) -> None:
    """Raise (KeyError/TypeError/ValueError) unless ``calib`` is a calibration of one of ``columns`` that :func:`p_values` can use."""
    if not isinstance(calib, dict) or calib.get("score") not in columns:
        raise ValueError(f"its score {calib.get('score') if isinstance(calib, dict) else None!r} is not one of this model's scores")
    if not (isinstance(calib["fpr"], (int, float)) and 0 < calib["fpr"] < 1):
        raise ValueError("fpr must be in (0, 1)")
    if calib["method"] == "gamma":
        values = [calib[k] for k in ("shift", "shape", "scale")]
        if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values) or calib["shape"] <= 0 or calib["scale"] <= 0:
            raise ValueError("gamma shift, shape and scale must be finite numbers (shape, scale > 0)")
    elif calib["method"] == "percentile":
        ref = np.asarray(calib["normal_scores"], dtype=float)
        if ref.ndim != 1 or len(ref) < 1:
            raise ValueError("normal_scores must be a list of numbers")
    else:
        raise ValueError(f"unknown method {calib['method']!r}")


def p_values(scores: np.ndarray, calib: dict) -> np.ndarray:
    s = np.asarray(scores, float)
    if calib["method"] == "gamma":
        return stats.gamma.sf(np.maximum(s - calib["shift"], 0.0), calib["shape"], scale=calib["scale"])
    ref = np.asarray(calib["normal_scores"])
    n_ge = len(ref) - np.searchsorted(ref, s, side="left")
    return (1.0 + n_ge) / (len(ref) + 1.0)


def flag(p: np.ndarray, calib: dict) -> np.ndarray:
    p = np.asarray(p, float)
    if calib.get("bh"):
        return stats.false_discovery_control(p, method="bh") < calib["fpr"]
    return p < calib["fpr"]
