"""The unsupervised ensemble: p-values on normal validation data, Fisher's combination, no test labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from evaluation.ensemble import combine, empirical_p, ensemble_scores
from pipeline.core import io


def _run(path, scores: np.ndarray, labels: np.ndarray, splits: np.ndarray, with_p: bool = True) -> None:
    table = pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(scores))], "patient_id": [f"p{i}" for i in range(len(scores))],
                          "series_uid": "", "kind": "image", "label": labels, "split": splits, "det": scores})
    if with_p:
        val = scores[(splits == "val") & (labels == 0)]
        a, loc, scale = stats.gamma.fit(val - val.min() + 1e-3, floc=0)
        table["p_value"] = stats.gamma.sf(np.maximum(scores - val.min() + 1e-3, 0), a, scale=scale)
    io.write_csv(path / "scores.csv", table)
    io.write_json(path / "metrics.json", {"primary_score": "det", "scores": {"det": {}}})


def _data(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    splits = np.where(np.arange(n) < 25, "val", "test")
    labels[:25] = 0
    return labels, splits, rng


def test_one_member_keeps_its_ranking(tmp_path):
    labels, splits, rng = _data(0)
    scores = rng.normal(size=len(labels)) + labels
    for with_p in (True, False):
        run = tmp_path / f"a{with_p}"
        _run(run, scores, labels, splits, with_p)
        ens = ensemble_scores([run])
        order = np.argsort(-scores, kind="stable")
        e = ens["ensemble"].to_numpy()
        assert np.all(np.diff(e[order]) <= 1e-12)  # monotone: the member's ranking (ties where p-values tie)


def test_test_labels_are_not_used(tmp_path):
    labels, splits, rng = _data(1)
    a, b = rng.normal(size=len(labels)) + labels, rng.normal(size=len(labels)) + 0.5 * labels
    _run(tmp_path / "a", a, labels, splits)
    _run(tmp_path / "b", b, labels, splits)
    ref = ensemble_scores([tmp_path / "a", tmp_path / "b"])["ensemble"].to_numpy()
    perm = labels.copy()
    test = splits == "test"
    perm[test] = rng.permutation(labels[test])
    _run(tmp_path / "a2", a, perm, splits)
    _run(tmp_path / "b2", b, perm, splits)
    assert np.array_equal(ensemble_scores([tmp_path / "a2", tmp_path / "b2"])["ensemble"].to_numpy(), ref)


def test_fisher_and_empirical_p_values():
    p = np.array([[0.5, 0.01], [0.5, 0.1]])
    np.testing.assert_allclose(combine(p, "fisher"), -2 * np.log(p).sum(0))
    np.testing.assert_allclose(combine(p, "mean_neglog"), -np.log(p).mean(0))
    np.testing.assert_allclose(empirical_p(np.array([0.0, 5.0, 100.0]), np.arange(10.0)), [1.0, 6 / 11, 1 / 11])
    assert np.isfinite(combine(np.array([[0.0]]))).all()
