"""FROC and CPM of candidate lists against annotated nodules (evaluation.froc), checked against hand computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.froc import FP_RATES, candidate_hits, froc, froc_curve, froc_per_scan, nodule_hits, rate_key


def _cands(rows):
    return pd.DataFrame(rows, columns=["series_uid", "x_mm", "score"]).assign(y_mm=0.0, z_mm=0.0)


NODULES = pd.DataFrame({"series_uid": ["a", "a", "b", "b"], "nodule_id": ["n1", "n2", "n3", "n4"], "x_mm": [0.0, 20.0, 0.0, 40.0],
                        "y_mm": 0.0, "z_mm": 0.0, "radius_mm": 3.0})
# score order: a/n1 TP · b FP · a/n1 again (neither) · b/n3 TP · a FP · a FP · b/n4 TP · b FP · a FP; n2 is never found
CANDS = _cands([("a", 0.0, 10), ("b", 100.0, 9), ("a", 0.5, 8), ("b", 0.0, 7), ("a", 60.0, 6), ("a", 70.0, 5), ("b", 41.0, 4),
                ("b", 200.0, 3), ("a", 300.0, 2)])


def test_cpm_equals_the_hand_computation():
    f = froc(CANDS.sample(frac=1.0, random_state=0), NODULES, n_scans=2, hit_mm=5.0)  # the input order does not matter
    # allowed false candidates = rate × 2 scans: 0.25 → 0, 0.5 → 0, 1 → 1, 2 → 2, 4 → 4, 8 → 8, 16 → 16
    by_hand = {0.125: 1 / 4, 0.25: 1 / 4, 0.5: 2 / 4, 1: 2 / 4, 2: 3 / 4, 4: 3 / 4, 8: 3 / 4}
    assert {r: f[rate_key(r)] for r in FP_RATES} == pytest.approx(by_hand)
    assert f["cpm"] == pytest.approx(3.75 / 7)


def test_the_curve_marks_true_repeat_and_false_candidates():
    curve = froc_curve(CANDS, NODULES, n_scans=2, hit_mm=5.0)
    assert curve["true"].tolist() == [True, False, False, True, False, False, True, False, False]
    assert curve["repeat"].tolist() == [False, False, True, False, False, False, False, False, False]
    assert curve["fp_per_scan"].tolist() == [0, 0.5, 0.5, 0.5, 1.0, 1.5, 1.5, 2.0, 2.5]
    assert curve["sensitivity"].iloc[-1] == pytest.approx(0.75)
    # candidates.csv's hit column is the same definition: true or repeat
    hits = candidate_hits(CANDS.sort_values("score", ascending=False), NODULES, hit_mm=5.0)
    assert hits.tolist() == (curve["true"] | curve["repeat"]).tolist()


def test_per_scan_froc_counts_each_scan_alone():
    per = froc_per_scan(CANDS, NODULES, hit_mm=5.0)
    assert per["a"]["nodules"] == 2 and per["a"]["cpm"] == pytest.approx(0.5)  # n1 before any false candidate, n2 never
    # scan b alone: FP, n3 (1 FP), n4 (1 FP), FP → 0 at ≤ 0.5 FP, 1.0 from 1 FP on
    assert [per["b"][rate_key(r)] for r in FP_RATES] == pytest.approx([0, 0, 0, 1, 1, 1, 1])


def test_nodule_hits_rank_distance_and_the_default_radius():
    cands = _cands([("a", 0.0, 9), ("a", 50.0, 8), ("a", 10.5, 7)]).assign(rank=[1, 2, 3])
    nodules = pd.DataFrame({"series_uid": "a", "nodule_id": ["n1", "n2"], "x_mm": [0.0, 10.0], "y_mm": 0.0, "z_mm": 0.0,
                            "radius_mm": [3.0, np.nan]})
    hits = nodule_hits(cands, nodules, hit_mm=5.0)
    assert hits["nearest_rank"].tolist() == [1, 3] and hits["hit"].tolist() == [True, True] and hits["radius_mm"].tolist() == [3.0, 5.0]
    assert hits["nearest_mm"].tolist() == pytest.approx([0.0, 0.5])
    none = nodule_hits(cands.iloc[:0], nodules, hit_mm=5.0)
    assert none["hit"].tolist() == [False, False] and none["nearest_rank"].isna().all()


def test_no_nodules_gives_nan_and_no_candidates_gives_zero():
    assert np.isnan(froc(CANDS, NODULES.iloc[:0], 2, 5.0)["cpm"])
    assert froc(CANDS.iloc[:0], NODULES, 2, 5.0)["cpm"] == 0.0


def test_folds_pool_to_the_hand_computation(tmp_path):
    """The whole-scan bench report ranks the candidates of every fold together: scan a mapped by one fold's
    model and scan b by another's give the same FROC as one list of both (the hand computation above)."""
    import json

    from evaluation.wholescan_report import wholescan_summary

    reps = []
    for i, uid in enumerate(["a", "b"]):
        run = tmp_path / f"fold{i}"
        run.mkdir()
        CANDS[CANDS.series_uid == uid].assign(rank=lambda d: np.arange(1, len(d) + 1)).to_csv(run / "candidates.csv", index=False)
        own = nodule_hits(CANDS[CANDS.series_uid == uid].assign(rank=1), NODULES[NODULES.series_uid == uid], 5.0)
        per = [dict(series_uid=uid, nodule_id=n.nodule_id, x_mm=n.x_mm, y_mm=n.y_mm, z_mm=n.z_mm, diameter_mm=6.0, **h.to_dict())
               for (_, n), (_, h) in zip(NODULES[NODULES.series_uid == uid].iterrows(), own.iterrows())]
        (run / "map_metrics.json").write_text(json.dumps({"nodules": per, "pooled": {"scans": 1}, "series_seconds": {uid: 10.0 + i}}))
        reps.append({"run_dir": str(run), "train_s": 100.0})
    s = wholescan_summary("det", reps)
    assert s["scans"] == 2 and s["nodules"] == 4 and s["candidates"] == len(CANDS)
    assert s["pooled"]["cpm"] == pytest.approx(3.75 / 7)
    assert s["per_scan"]["a"] == pytest.approx(froc(CANDS[CANDS.series_uid == "a"], NODULES[NODULES.series_uid == "a"], 1, 5.0)["cpm"])
    assert s["map_s_per_scan"] == pytest.approx(10.5)
    assert s["malignancy_spearman"] is None  # no ratings in these folds
