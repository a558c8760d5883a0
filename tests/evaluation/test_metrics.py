"""Detection metrics (vs scikit-learn), bootstrap CI, sensitivity at specificity and overlay painting."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.metrics import average_precision_score, roc_auc_score

from evaluation.metrics import bootstrap_auroc, detection_metrics, sensitivity_at_specificity
from evaluation.overlays import paint, write_overlay
from preprocessing.geometry import ras_affine


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(60, int), np.ones(25, int)]
    scores = rng.normal(size=85) + 1.0 * labels
    scores[:5] = np.round(scores[:5])  # some ties
    scores[60:63] = scores[:3]  # ties across classes
    perm = rng.permutation(85)
    return labels[perm], scores[perm]


def test_auroc_and_auprc_match_sklearn(data):
    labels, scores = data
    m = detection_metrics(labels, scores, n_boot=200, seed=1)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert m["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert m["n_anomalous"] == 25 and m["n_normal"] == 60
    assert "undefined" not in m
    assert 0.5 < m["auroc"] < 1.0  # sanity: the anomalies do score higher


def test_ci_contains_point_estimate(data):
    labels, scores = data
    m = detection_metrics(labels, scores, n_boot=500, ci=0.95, seed=0)
    lo, hi = m["auroc_ci"]
    assert lo < m["auroc"] < hi
    assert 0.0 <= lo < hi <= 1.0
    assert m["ci_level"] == 0.95
    # a narrower level gives a narrower interval
    lo80, hi80 = detection_metrics(labels, scores, n_boot=500, ci=0.80, seed=0)["auroc_ci"]
    assert lo <= lo80 < hi80 <= hi
    assert detection_metrics(labels, scores, n_boot=0)["auroc_ci"] is None


def test_bootstrap_rank_identity_equals_sklearn_per_resample(data):
    """The vectorised Mann-Whitney bootstrap must equal sklearn on the very same resamples (ties ½)."""
    labels, scores = data
    n, seed, ci = 300, 4, 0.9
    got = bootstrap_auroc(labels, scores, n=n, ci=ci, seed=seed)
    rng = np.random.default_rng(seed)
    pos, neg = scores[labels == 1], scores[labels == 0]
    ip = rng.integers(0, len(pos), (n, len(pos)))
    ineg = rng.integers(0, len(neg), (n, len(neg)))
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    stats = np.array([roc_auc_score(y, np.r_[pos[a], neg[b]]) for a, b in zip(ip, ineg)])
    a = (1 - ci) / 2
    assert got == pytest.approx((np.quantile(stats, a), np.quantile(stats, 1 - a)), abs=1e-12)


@pytest.mark.parametrize("labels", [np.zeros(10, int), np.ones(7, int)])
def test_single_class_is_undefined_not_an_error(labels):
    scores = np.linspace(0, 1, len(labels))
    m = detection_metrics(labels, scores, n_boot=100)
    assert "undefined" in m and isinstance(m["undefined"], str)
    assert "both classes" in m["undefined"]
    assert "auroc" not in m and "auprc" not in m


def test_non_finite_scores_are_dropped_and_counted():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, np.nan, 0.3, 0.9, np.inf, 0.2])
    m = detection_metrics(labels, scores, n_boot=50)
    assert m["n_non_finite_scores"] == 2
    keep = np.isfinite(scores)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels[keep], scores[keep]))
    # all anomalies non-finite -> undefined, not an exception
    m2 = detection_metrics(np.array([0, 0, 1]), np.array([0.1, 0.2, np.nan]), n_boot=10)
    assert "undefined" in m2


def test_sensitivity_at_specificity_hand_example():
    # 10 normals scored 0.1 .. 1.0, 4 anomalies scored 1.2, 0.95, 0.5, 0.05
    normals = np.round(np.arange(1, 11) / 10, 2)
    anomalies = np.array([1.2, 0.95, 0.5, 0.05])
    labels = np.r_[np.zeros(10, int), np.ones(4, int)]
    scores = np.r_[normals, anomalies]
    # spec ≥ 0.95 allows no false positive: threshold above 1.0 catches only 1.2
    assert sensitivity_at_specificity(labels, scores, 0.95) == pytest.approx(0.25)
    # spec ≥ 0.90 allows one false positive (1.0): 1.2 and 0.95 caught
    assert sensitivity_at_specificity(labels, scores, 0.90) == pytest.approx(0.50)
    # spec ≥ 0.50 allows five (0.6 .. 1.0); 0.5 would need six
    assert sensitivity_at_specificity(labels, scores, 0.50) == pytest.approx(0.50)
    # spec ≥ 0.40 allows six false positives: 0.5 caught as well
    assert sensitivity_at_specificity(labels, scores, 0.40) == pytest.approx(0.75)
    assert sensitivity_at_specificity(labels, scores, 0.0) == pytest.approx(1.0)
    m = detection_metrics(labels, scores, n_boot=20)
    assert m["sens_at_90_spec"] == pytest.approx(0.5) and m["sens_at_95_spec"] == pytest.approx(0.25)


def test_perfect_and_inverted_detectors():
    labels = np.array([0, 0, 0, 1, 1])
    m = detection_metrics(labels, np.array([0.1, 0.2, 0.3, 0.8, 0.9]), n_boot=100)
    assert m["auroc"] == 1.0 and m["auprc"] == 1.0 and m["sens_at_95_spec"] == 1.0
    assert m["auroc_ci"] == [1.0, 1.0]
    m = detection_metrics(labels, -np.array([0.1, 0.2, 0.3, 0.8, 0.9]), n_boot=100)
    assert m["auroc"] == 0.0 and m["sens_at_90_spec"] == 0.0


# ---------------------------------------------------------------- overlays


def test_paint_places_block_at_ijk_start():
    shape = (5, 6, 7)  # zyx
    block = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) + 1  # zyx block
    vol = paint(shape, np.array([[1, 2, 3]]), [block])  # start i=1 (x), j=2 (y), k=3 (z)
    assert vol.shape == shape and vol.dtype == np.float32
    np.testing.assert_array_equal(vol[3:5, 2:5, 1:5], block)
    outside = np.ones(shape, bool)
    outside[3:5, 2:5, 1:5] = False
    assert (vol[outside] == 0).all()
    assert vol[3, 2, 1] == block[0, 0, 0] and vol[4, 4, 4] == block[1, 2, 3]


def test_paint_clips_at_edges():
    shape = (5, 6, 7)
    block = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) + 1
    # x from -1 (one column off the low edge), y from 4 (one row off the high edge), z from 4 (one slice off)
    vol = paint(shape, np.array([[-1, 4, 4]]), [block], fill=-1.0)
    np.testing.assert_array_equal(vol[4:5, 4:6, 0:3], block[0:1, 0:2, 1:4])
    assert (vol == -1.0).sum() == vol.size - 1 * 2 * 3
    # blocks entirely outside are skipped, no error
    vol2 = paint(shape, np.array([[10, 0, 0], [0, -3, 0]]), [block, block], fill=0.5)
    assert (vol2 == 0.5).all()


def test_paint_overlap_keeps_maximum():
    shape = (4, 4, 4)
    a = np.full((2, 2, 2), 3.0)
    b = np.full((2, 2, 2), 5.0)
    b[0, 0, 0] = 1.0
    vol = paint(shape, np.array([[1, 1, 1], [1, 1, 1]]), np.stack([a, b]))
    expected = np.maximum(a, b)
    np.testing.assert_array_equal(vol[1:3, 1:3, 1:3], expected)
    vol_rev = paint(shape, np.array([[1, 1, 1], [1, 1, 1]]), [b, a])
    np.testing.assert_array_equal(vol, vol_rev)  # order independent


def test_write_overlay_copies_reference_geometry(tmp_path):
    ref = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    ref.SetSpacing((0.8, 0.9, 1.5))
    ref.SetOrigin((10.0, -20.0, 30.0))
    c, s = np.cos(0.2), np.sin(0.2)
    ref.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    vol = paint((4, 5, 6), np.array([[1, 1, 1]]), [np.ones((2, 2, 2))])
    ref_path, ov_path = tmp_path / "ct.nii.gz", tmp_path / "ov.nii.gz"
    sitk.WriteImage(ref, str(ref_path))
    write_overlay(ref, vol, ov_path)
    ct, ov = nib.load(ref_path), nib.load(ov_path)
    assert np.array_equal(ov.affine, ct.affine)
    assert np.allclose(ov.affine, ras_affine(ref), atol=1e-4)
    data = np.asarray(ov.dataobj)  # xyz
    np.testing.assert_array_equal(data, vol.transpose(2, 1, 0))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind


def test_weighted_auroc_equals_sklearn_with_sample_weights(data):
    """The vectorised weighted Mann-Whitney statistic equals sklearn's weighted AUROC, ties ½, row by row."""
    from evaluation.metrics import weighted_auroc
    labels, scores = data
    rng = np.random.default_rng(3)
    w = rng.integers(0, 4, (50, len(labels)))
    w[0] = 1  # the unweighted sample
    w[1] = w[1] * (labels == 0)  # no anomaly left: undefined
    got = weighted_auroc(labels, scores, w)
    assert got[0] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(got[1])
    for row, g in zip(w[2:], got[2:]):
        assert g == pytest.approx(roc_auc_score(labels, scores, sample_weight=row), abs=1e-12)


def test_cluster_bootstrap_equals_sklearn_on_the_same_patient_resamples(data):
    """The patient bootstrap's CI equals the one from calling sklearn on each resampled set of patients."""
    from evaluation.metrics import cluster_bootstrap_auroc
    labels, scores = data
    groups = np.arange(len(labels)) // 3  # patients of 3 samples
    n, seed, ci = 200, 7, 0.9
    got = cluster_bootstrap_auroc(labels, scores, groups, n=n, ci=ci, seed=seed)
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    has_anom = np.array([labels[m].max() for m in members])
    strata = [np.flatnonzero(has_anom == v) for v in (0, 1)]
    stats = []
    for _ in range(n):
        idx = np.concatenate([members[g] for g in np.concatenate([rng.choice(s, len(s)) for s in strata])])
        if len(np.unique(labels[idx])) == 2:
            stats.append(roc_auc_score(labels[idx], scores[idx]))
    a = (1 - ci) / 2
    assert got == pytest.approx((np.quantile(stats, a), np.quantile(stats, 1 - a)), abs=1e-12)
