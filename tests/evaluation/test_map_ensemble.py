"""Whole-scan map ensemble (evaluation/map_ensemble.py): tail ranks within the lung region, Fisher-combined."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.map_ensemble import combine_maps, tail_p


def test_tail_ranks_are_empirical_p_values_in_the_region_and_one_outside():
    values = np.array([[0.0, 1.0, 2.0, 3.0], [9.0, 9.0, 9.0, 9.0]])
    region = np.array([[True, True, True, True], [False, False, False, False]])
    p = tail_p(values, region)
    assert p[0].tolist() == pytest.approx([5 / 5, 4 / 5, 3 / 5, 2 / 5])  # (1 + #{≥ v}) / (n + 1), n = 4
    assert (p[1] == 1).all()


def test_fisher_ranks_a_voxel_both_members_mark_above_one_that_only_one_marks():
    rng = np.random.default_rng(0)
    shape = (12, 12, 12)
    a, b = rng.normal(0, 1, shape), rng.normal(0, 1, shape) * 50 + 7  # other scales: only ranks count
    both, only_a, only_b = (3, 3, 3), (8, 8, 8), (3, 8, 3)
    a[both], b[both] = 4.0, 7 + 50 * 4.0  # high in both, though not the top of either
    a[only_a], b[only_b] = 10.0, 7 + 50 * 10.0  # the top of one member, ordinary in the other
    b[only_a], a[only_b] = 7.0, 0.0
    region = np.ones(shape, bool)
    region[0] = False
    m = combine_maps([a, b], region)
    assert m[both] > max(m[only_a], m[only_b])
    assert np.argmax(m) == np.ravel_multi_index(both, shape)
    assert (m[~region] == 0).all()
    # a member combined with itself ranks the voxels as that member does
    self_ranked = combine_maps([a, a], region)
    inside = region.ravel()
    assert np.array_equal(np.argsort(-self_ranked.ravel()[inside], kind="stable"), np.argsort(-a.ravel()[inside], kind="stable"))


def test_the_bench_pairs_member_runs_by_the_series_they_mapped_not_by_fold_number(tmp_path, monkeypatch):
    """Members with other data sections may number the leave-one-out folds differently: fold 0 of one maps the
    series that fold 1 of the other maps. The whole-scan ensemble must combine maps of the same series."""
    import evaluation.bench_report as br

    def run(member: str, fold: int, uid: str) -> dict:
        d = tmp_path / member / f"fold{fold}"
        d.mkdir(parents=True)
        (d / "map_metrics.json").write_text(json.dumps({"series_seconds": {uid: 1.0}, "nodules": []}))
        return {"run_dir": str(d), "train_s": 10.0 * (fold + 1)}

    a = [run("a", 0, "S1"), run("a", 1, "S2")]
    b = [run("b", 0, "S2"), run("b", 1, "S1")]
    calls = []
    monkeypatch.setattr(br, "ensemble_maps", lambda dirs, out, method: calls.append(([d.parent.name + "/" + d.name for d in dirs], out.name)))
    ens = type("E", (), {"label": "a + b", "method": "fisher"})
    records = br._map_ensemble_records(ens, [a, b])
    assert calls == [(["a/fold0", "b/fold1"], "fold0"), (["a/fold1", "b/fold0"], "fold1")]
    assert [r["train_s"] for r in records] == [30.0, 30.0]
    # a member without a CT map: no whole-scan ensemble
    (Path(b[0]["run_dir"]) / "map_metrics.json").write_text(json.dumps({"kind": "images", "series_seconds": {}}))
    assert br._map_ensemble_records(ens, [a, b]) == []
