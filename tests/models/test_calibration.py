"""Thresholds and p-values fitted on normal validation scores."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from models.calibration import fit_calibration, flag, p_values


def test_gamma_p_values_are_uniform_on_held_out_normals():
    rng = np.random.default_rng(0)
    a, scale, loc = 3.0, 2.0, 100.0  # scores from a shifted Gamma, as the model's normals might be
    val = loc + stats.gamma.rvs(a, scale=scale, size=2000, random_state=rng)
    held_out = loc + stats.gamma.rvs(a, scale=scale, size=2000, random_state=rng)
    calib = fit_calibration(val, "gamma", fpr=0.05)
    p = p_values(held_out, calib)
    assert stats.kstest(p, "uniform").statistic < 0.05
    # the flag rate on normals is the target false-positive rate
    assert abs(flag(p, calib).mean() - 0.05) < 0.02
    # anomalies (far in the tail) get small p-values
    assert p_values(np.array([loc + 60.0]), calib)[0] < 1e-3


def test_percentile_p_values_and_threshold():
    val = np.arange(1, 101, dtype=float)
    calib = fit_calibration(val, "percentile", fpr=0.1)
    assert calib["threshold"] == pytest.approx(np.quantile(val, 0.9))
    p = p_values(np.array([0.0, 95.5, 1000.0]), calib)
    assert p[0] == pytest.approx(1.0) and p[1] == pytest.approx(6 / 101) and p[2] == pytest.approx(1 / 101)


def test_benjamini_hochberg_flags_fewer_than_per_sample_cut():
    rng = np.random.default_rng(1)
    val = rng.normal(size=500) ** 2
    scores = np.r_[rng.normal(size=950) ** 2, 30 + rng.normal(size=50)]
    plain = fit_calibration(val, "gamma", fpr=0.05)
    bh = fit_calibration(val, "gamma", fpr=0.05, bh=True)
    p = p_values(scores, plain)
    f_plain, f_bh = flag(p, plain), flag(p, bh)
    assert f_bh.sum() <= f_plain.sum()
    assert f_bh[950:].all()  # the clear anomalies survive the FDR control
    assert f_bh[:950].mean() < f_plain[:950].mean()


def test_too_few_normals_is_an_error():
    with pytest.raises(ValueError, match="at least 5"):
        fit_calibration(np.array([1.0, 2.0]))


def test_bootstrap_ci_covers_true_auroc_at_about_the_nominal_rate():
    """Binormal scores with known AUROC Φ(d/√2): the 95% CI should cover it in ~95% of simulations."""
    from evaluation.metrics import bootstrap_auroc

    rng = np.random.default_rng(42)
    d = 1.0
    true_auc = stats.norm.cdf(d / np.sqrt(2))
    hits, n_sim = 0, 200
    for i in range(n_sim):
        y = np.r_[np.ones(60, int), np.zeros(60, int)]
        s = np.r_[rng.normal(d, 1, 60), rng.normal(0, 1, 60)]
        lo, hi = bootstrap_auroc(y, s, n=400, ci=0.95, seed=i)
        hits += lo <= true_auc <= hi
    assert 0.88 <= hits / n_sim <= 0.99, hits / n_sim
