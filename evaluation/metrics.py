"""Detection metrics from scikit-learn, with a stratified bootstrap CI for the AUROC.

Scores are oriented so that higher = more anomalous; labels are 1 for anomalies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold, cross_val_predict

DEFINITIONS = {
    "auroc": "area under the ROC curve (sklearn.metrics.roc_auc_score); 0.5 = chance",
    "auroc_ci": "stratified percentile bootstrap CI of the AUROC: anomalies and normals are resampled separately with replacement",
    "auprc": "average precision (sklearn.metrics.average_precision_score); chance = prevalence",
    "sens_at_90_spec": "sensitivity (TPR) at the ROC point with specificity ≥ 0.90",
    "sens_at_95_spec": "sensitivity (TPR) at the ROC point with specificity ≥ 0.95",
    "pauroc_fpr10": "partial AUROC for FPR ≤ 0.10, McClish-standardised (sklearn roc_auc_score max_fpr=0.1); 0.5 = chance",
    "lr_protocol": "Santos Buitrago et al. 2018: logistic regression from the 1-D score to the label; cv_auroc uses 5-fold stratified "
                   "out-of-fold probabilities, fitted_auroc fits on all data (a monotone map: equals auroc when coef > 0)",
    "patient_level": "AUROC of the maximum score per patient against 'patient has an anomaly'",
    "bootstrap_unit": "patient (cluster bootstrap) when patients contribute several samples and each stratum has ≥ 5 patients; otherwise sample",
}


def bootstrap_auroc(labels: np.ndarray, scores: np.ndarray, n: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the AUROC from a bootstrap that keeps the class counts fixed.

    The n resampled AUROCs are computed at once with the Mann-Whitney rank identity
    AUROC = (Σ ranks of anomalies − n₁(n₁+1)/2) / (n₁·n₀), which equals sklearn's
    ``roc_auc_score`` (ties count ½) and is ~100× faster than calling it n times.
    """
    rng = np.random.default_rng(seed)
    pos, neg = scores[labels == 1], scores[labels == 0]
    n1, n0 = len(pos), len(neg)
    boot = np.concatenate([pos[rng.integers(0, n1, (n, n1))], neg[rng.integers(0, n0, (n, n0))]], axis=1)
    ranks = rankdata(boot, axis=1)
    stats = (ranks[:, :n1].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    a = (1 - ci) / 2
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def weighted_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one labelled sample under each row of integer ``weights`` (B × n): NaN where a row
    leaves one class empty.

    A cluster bootstrap resample is the original sample with each item repeated as often as its
    patient was drawn, so its AUROC is the weighted Mann-Whitney statistic
    Σ_pos w_i (W_neg below s_i + ½ W_neg tied with s_i) / (W_pos W_neg), which is what
    ``roc_auc_score(..., sample_weight=w)`` computes. Written out because the B resamples then share
    one sort and cost a few array operations instead of B scikit-learn calls (≈ 2.5 ms each, mostly
    input validation: 80 s of a quick benchmark's 100 s of summarising).
    """
    order = np.argsort(scores, kind="stable")
    s, y, w = scores[order], labels[order], np.asarray(weights, float)[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each run of tied scores
    neg = np.add.reduceat(w * (y == 0), starts, axis=1)  # B × (distinct scores): normal weight per score
    pos = np.add.reduceat(w * (y == 1), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    den = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (pos * (below + 0.5 * neg)).sum(1) / den, np.nan)


def cluster_bootstrap_auroc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, n: int = 1000, ci: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile CI resampling whole patients (stratified by whether the patient has an anomaly).

    Resamples that hold one class only are dropped (as an AUROC is undefined there).
    """
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(groups, return_inverse=True)
    has_anom = np.zeros(len(uniq), int)
    np.maximum.at(has_anom, inv, np.asarray(labels, int))
    strata = [np.flatnonzero(has_anom == v) for v in (0, 1)]
    counts = np.zeros((n, len(uniq)))  # how often each patient is drawn, per resample
    for b in range(n):
        pick = np.concatenate([rng.choice(s, len(s)) for s in strata if len(s)])
        np.add.at(counts[b], pick, 1)
    stats = weighted_auroc(labels, scores, counts[:, inv])
    stats = stats[np.isfinite(stats)]
    a = (1 - ci) / 2
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def logistic_protocol(labels: np.ndarray, scores: np.ndarray, seed: int = 0) -> dict:
    """The seeds' protocol: score → probability by logistic regression; cross-validated and fitted."""
    x = scores.reshape(-1, 1)
    x = (x - x.mean()) / (x.std() + 1e-12)
    n_splits = int(min(5, np.bincount(labels).min()))
    out: dict = {}
    if n_splits >= 2:
        cv = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
        prob = cross_val_predict(LogisticRegression(), x, labels, cv=cv, method="predict_proba")[:, 1]
        out["cv_auroc"] = float(roc_auc_score(labels, prob))
    lr = LogisticRegression().fit(x, labels)
    out["fitted_auroc"] = float(roc_auc_score(labels, lr.predict_proba(x)[:, 1]))
    out["coef"] = float(lr.coef_[0, 0])
    return out


def patient_level_auroc(labels: np.ndarray, scores: np.ndarray, patients: np.ndarray) -> dict:
    """AUROC of max score per patient vs 'patient has any anomaly'."""
    df = pd.DataFrame({"p": patients, "y": labels, "s": scores}).groupby("p").agg(y=("y", "max"), s=("s", "max"))
    if df["y"].nunique() < 2:
        return {"undefined": "needs patients with and without anomalies", "n_patients": int(len(df))}
    return {"auroc": float(roc_auc_score(df["y"], df["s"])), "n_patients": int(len(df)), "n_anomalous_patients": int(df["y"].sum())}


def per_class_auroc(classes: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict:
    """One AUROC per anomalous class: all normals against the samples of that class (Lu & Xu 2018, Table 2)."""
    normal = labels == 0
    out = {}
    for c in np.unique(classes[labels == 1]):
        sel = normal | (classes == c)
        out[str(c)] = {"auroc": float(roc_auc_score(labels[sel], scores[sel])), "n": int((classes[sel] == c).sum())}
    return out


def sensitivity_at_specificity(labels: np.ndarray, scores: np.ndarray, specificity: float) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    ok = fpr <= 1 - specificity + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def detection_metrics(labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                      groups: np.ndarray | None = None) -> dict:
    """AUROC with CI, AUPRC, sensitivity at fixed specificity, partial AUROC and the LR protocol.

    ``groups`` (patient IDs): when a patient contributes several samples, the CI resamples patients.
    Explains itself instead of failing when a metric is undefined.
    """
    labels = np.asarray(labels, int)
    scores = np.asarray(scores, float)
    n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
    out: dict = {"n_anomalous": n_pos, "n_normal": n_neg}
    finite = np.isfinite(scores)
    if not finite.all():
        out["n_non_finite_scores"] = int((~finite).sum())
        labels, scores = labels[finite], scores[finite]
        n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        out["undefined"] = f"needs both classes in the evaluated split (anomalous={n_pos}, normal={n_neg})"
        return out
    out["auroc"] = float(roc_auc_score(labels, scores))
    clustered = False
    if groups is not None:
        g = np.asarray(groups)[finite]
        per_patient = {p: labels[g == p].max() for p in np.unique(g)}
        n_pat = np.bincount(np.fromiter(per_patient.values(), int), minlength=2)
        # patients contribute several samples, and there are enough patients per stratum to resample
        clustered = len(per_patient) < len(labels) and n_pat.min() >= 5
    if n_boot > 0:
        boot = (cluster_bootstrap_auroc(labels, scores, np.asarray(groups)[finite], n_boot, ci, seed) if clustered
                else bootstrap_auroc(labels, scores, n_boot, ci, seed))
    out["auroc_ci"] = list(boot) if n_boot > 0 else None
    out["bootstrap_unit"] = "patient" if clustered else "sample"
    out["ci_level"] = ci
    out["auprc"] = float(average_precision_score(labels, scores))
    out["sens_at_90_spec"] = sensitivity_at_specificity(labels, scores, 0.90)
    out["sens_at_95_spec"] = sensitivity_at_specificity(labels, scores, 0.95)
    out["pauroc_fpr10"] = float(roc_auc_score(labels, scores, max_fpr=0.1))
    out["lr_protocol"] = logistic_protocol(labels, scores, seed)
    return out
