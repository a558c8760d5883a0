"""Grouped, stratified splits: no patient/block leakage, overlap buffering and contamination."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.core.schema import SplitConfig
from preprocessing.grouped_splits import assert_no_leakage, assign_groups, make_splits

SIZE = 32
USED = ("train", "val", "test")


def multi_patient_samples(n_patients: int = 30, normals: int = 6, anomalies: int = 2, seed: int = 0, anomalous_every: int = 1) -> pd.DataFrame:
    """Each patient: one series; cubes on a non-overlapping grid inside that series.

    Every ``anomalous_every``-th patient has anomalies; the others only normal cubes.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        pid = f"P{p:03d}"
        uid = f"1.2.3.{p}"
        n_anom = anomalies + (p % 2) if p % anomalous_every == 0 else 0  # some variety in the class balance
        labels = [0] * normals + [1] * n_anom
        rng.shuffle(labels)
        for s, lab in enumerate(labels):
            start = np.array([s * 40, (s % 3) * 40, 10])  # 40-voxel spacing: never overlapping
            rows.append({"sample_id": f"{pid}_{s:02d}", "patient_id": pid, "series_uid": uid, "label": lab,
                         "x_mm": float(start[0] + SIZE // 2), "y_mm": float(start[1] + SIZE // 2), "z_mm": float(start[2] + SIZE // 2),
                         "start_i": int(start[0]), "start_j": int(start[1]), "start_k": int(start[2]), "size": SIZE})
    return pd.DataFrame(rows)


def single_patient_samples() -> pd.DataFrame:
    """One patient, one series: cubes on a 16-voxel grid, so neighbours overlap by half a cube."""
    rows = []
    n = 0
    for k in range(0, 112, 16):
        for j in range(0, 160, 16):
            for i in range(0, 160, 16):
                lab = int((i // 16 + 2 * (j // 16) + 3 * (k // 16)) % 7 == 0)
                rows.append({"sample_id": f"s{n:04d}", "patient_id": "LIDC-0001", "series_uid": "1.2.3", "label": lab,
                             "x_mm": -100.0 + i + SIZE // 2, "y_mm": 50.0 + j + SIZE // 2, "z_mm": -200.0 + k + SIZE // 2,
                             "start_i": i, "start_j": j, "start_k": k, "size": SIZE})
                n += 1
    return pd.DataFrame(rows)


def overlapping_pairs(samples: pd.DataFrame, splits: pd.DataFrame, inner: str, outer: tuple[str, ...]) -> int:
    """Independent count of (inner, outer) cube pairs in the same series that share a voxel.

    Two cubes [s, s + size) share a voxel iff on every axis each starts before the other ends.
    """
    a = samples[(splits["split"] == inner).to_numpy()]
    b = samples[splits["split"].isin(outer).to_numpy()]
    cols = ["start_i", "start_j", "start_k"]
    sa, sb = a[cols].to_numpy()[:, None, :], b[cols].to_numpy()[None, :, :]
    za, zb = a["size"].to_numpy()[:, None, None], b["size"].to_numpy()[None, :, None]
    same_series = a["series_uid"].to_numpy()[:, None] == b["series_uid"].to_numpy()[None, :]
    share = ((sa < sb + zb) & (sb < sa + za)).all(-1) & same_series
    return int(share.sum())


def patients_per_split(splits: pd.DataFrame) -> dict[str, set]:
    return {s: set(splits.loc[splits.split == s, "patient_id"]) for s in USED}


def check_patient_disjoint(splits: pd.DataFrame) -> None:
    per = patients_per_split(splits)
    assert per["train"] and per["test"]
    assert not per["train"] & per["val"]
    assert not per["train"] & per["test"]
    assert not per["val"] & per["test"]


def test_holdout_patient_grouped():
    samples = multi_patient_samples()
    cfg = SplitConfig(method="holdout", test_fraction=0.25, val_fraction=0.2)
    splits = make_splits(samples, cfg, seed=0)
    assert len(splits) == len(samples)
    assert list(splits.sample_id) == list(samples.sample_id)
    assert (splits.grouping == "patient").all()
    assert_no_leakage(splits, samples)
    check_patient_disjoint(splits)
    per = patients_per_split(splits)
    assert per["val"]
    # proportions are roughly as configured (by patient)
    n_test = len(per["test"])
    assert 4 <= n_test <= 11, n_test
    # both classes in test (stratified)
    assert set(splits.loc[splits.split == "test", "label"]) == {0, 1}
    # contamination 0: no anomaly trains; train anomalies are 'unused'
    assert not ((splits.split == "train") & (splits.label == 1)).any()
    assert ((splits.split == "unused") & (splits.label == 1)).any()
    assert not ((splits.split == "unused") & (splits.label == 0)).any()
    assert set(splits.split) <= {"train", "val", "test", "buffer", "unused"}
    # no overlaps exist across patients, so nothing is buffered
    assert not (splits.split == "buffer").any()


def test_holdout_is_deterministic_and_seed_dependent():
    samples = multi_patient_samples()
    cfg = SplitConfig()
    a = make_splits(samples, cfg, seed=3)
    b = make_splits(samples, cfg, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = make_splits(samples, cfg, seed=4)
    assert not a.split.equals(c.split)


def test_kfold_each_patient_tested_once():
    samples = multi_patient_samples()
    tested: list[str] = []
    for fold in range(5):
        cfg = SplitConfig(method="kfold", n_folds=5, fold=fold, val_fraction=0.2)
        splits = make_splits(samples, cfg, seed=1)
        assert_no_leakage(splits, samples)
        check_patient_disjoint(splits)
        assert (splits.loc[splits.split == "test", "fold"] == fold).all()
        assert set(splits.fold) == set(range(5))
        tested += sorted(set(splits.loc[splits.split == "test", "patient_id"]))
    assert sorted(tested) == sorted(samples.patient_id.unique())  # every patient exactly once


def test_anomalies_to_test():
    samples = multi_patient_samples(n_patients=40, anomalous_every=4)
    cfg = SplitConfig(anomalies_to_test=True)
    splits = make_splits(samples, cfg, seed=0)
    assert_no_leakage(splits, samples)
    check_patient_disjoint(splits)
    assert (splits.loc[splits.label == 1, "split"] == "test").all()
    anomalous_patients = set(samples.loc[samples.label == 1, "patient_id"])
    assert len(anomalous_patients) == 10
    # every sample of a patient holding an anomaly is in test (the whole group)
    assert (splits.loc[splits.patient_id.isin(anomalous_patients), "split"] == "test").all()
    # and some normal-only patients are tested too
    assert patients_per_split(splits)["test"] - anomalous_patients


def test_leaky_split_raises():
    samples = multi_patient_samples(n_patients=4, normals=2, anomalies=1)
    splits = pd.DataFrame({"sample_id": samples.sample_id, "patient_id": samples.patient_id, "group": samples.patient_id,
                           "label": samples.label, "split": "train", "fold": 0, "grouping": "patient"})
    splits.loc[samples.patient_id == "P001", "split"] = "test"
    splits.loc[samples.patient_id == "P002", "split"] = "val"
    assert_no_leakage(splits, samples)  # a clean hand-made split passes
    leaky = splits.copy()
    leaky.loc[leaky.index[leaky.patient_id == "P000"][0], "split"] = "test"  # P000 now in train and test
    with pytest.raises(AssertionError, match="leakage"):
        assert_no_leakage(leaky, samples)


def test_leaky_patient_with_distinct_groups_raises():
    samples = multi_patient_samples(n_patients=3, normals=2, anomalies=1)
    splits = pd.DataFrame({"sample_id": samples.sample_id, "patient_id": samples.patient_id,
                           "group": samples.sample_id, "label": samples.label, "split": "train", "fold": 0, "grouping": "patient"})
    splits.loc[splits.index[0], "split"] = "test"  # same patient, different group labels
    with pytest.raises(AssertionError, match="patient"):
        assert_no_leakage(splits, samples)


def test_overlapping_cubes_across_splits_raise():
    samples = single_patient_samples().iloc[:2].copy()  # starts (0,0,0) and (16,0,0): overlapping
    splits = pd.DataFrame({"sample_id": samples.sample_id, "patient_id": samples.patient_id, "group": ["g0", "g1"],
                           "label": [0, 0], "split": ["train", "test"], "fold": [0, 0], "grouping": "spatial_block"})
    with pytest.raises(AssertionError, match="overlap"):
        assert_no_leakage(splits, samples)
    far = samples.copy()
    far["start_i"] = [0, 32]  # touching faces, no shared voxel
    assert_no_leakage(splits, far)


def test_single_patient_spatial_blocks_no_overlap():
    samples = single_patient_samples()
    cfg = SplitConfig(group_by="auto", block_mm=64.0, test_fraction=0.25, val_fraction=0.2)
    groups, mode = assign_groups(samples, cfg)
    assert mode == "spatial_block"
    assert groups.nunique() >= 8
    splits = make_splits(samples, cfg, seed=0)
    assert (splits.grouping == "spatial_block").all()
    assert_no_leakage(splits, samples)
    counts = splits.split.value_counts()
    assert counts.get("train", 0) > 0 and counts.get("test", 0) > 0 and counts.get("val", 0) > 0
    assert counts.get("buffer", 0) > 0  # neighbours of held-out cubes were moved out
    # independent check on the start indices: no train cube shares a voxel with a val/test cube,
    # and no val cube with a test cube
    assert overlapping_pairs(samples, splits, "train", ("val", "test")) == 0
    assert overlapping_pairs(samples, splits, "val", ("test",)) == 0
    # blocks stay whole
    used = splits[splits.split.isin(USED)]
    assert (used.groupby("group").split.nunique() == 1).all()


def test_group_by_patient_forced_with_one_patient_fails_cleanly():
    from pipeline.core.errors import StageError

    samples = single_patient_samples()
    with pytest.raises(StageError, match="group"):
        make_splits(samples, SplitConfig(group_by="patient"), seed=0)


@pytest.mark.parametrize("contamination", [0.05, 0.1, 0.2])
def test_contamination_fraction(contamination):
    samples = multi_patient_samples()
    cfg = SplitConfig(contamination=contamination)
    splits = make_splits(samples, cfg, seed=0)
    assert_no_leakage(splits, samples)
    train = splits[splits.split == "train"]
    n_anom = int((train.label == 1).sum())
    n_norm = int((train.label == 0).sum())
    assert n_anom == round(contamination * n_norm / (1 - contamination))
    frac = n_anom / len(train)
    assert frac == pytest.approx(contamination, abs=1.0 / len(train))
    assert n_anom > 0
    # the anomalies that are not used for contamination are 'unused', none lost or duplicated
    base = make_splits(samples, SplitConfig(contamination=0.0), seed=0)
    moved = (base.split == "unused") & (splits.split == "train")
    assert int(moved.sum()) == n_anom
    assert ((base.split == splits.split) | moved).all()


def test_contamination_zero_means_no_train_anomalies():
    samples = multi_patient_samples()
    splits = make_splits(samples, SplitConfig(contamination=0.0), seed=2)
    assert ((splits.split == "train") & (splits.label == 1)).sum() == 0
    assert ((splits.split == "train") & (splits.label == 0)).sum() > 0


def test_contamination_fraction_holds_after_overlap_buffering():
    """With spatial blocks, cubes next to held-out blocks go to ``buffer``; the contamination
    fraction must hold for the training set that is actually used (after buffering)."""
    samples = single_patient_samples()
    contamination = 0.1
    results = []
    for seed in range(3):
        splits = make_splits(samples, SplitConfig(contamination=contamination, block_mm=64.0), seed)
        assert_no_leakage(splits, samples)
        train = splits[splits.split == "train"]
        n_anom, n_norm = int((train.label == 1).sum()), int((train.label == 0).sum())
        results.append((seed, n_anom, round(contamination * n_norm / (1 - contamination)), n_anom / len(train)))
    bad = [r for r in results if r[1] != r[2]]
    assert not bad, f"(seed, train anomalies, expected for {contamination:.0%} contamination, actual fraction): {bad}"


def test_predefined_split_without_validation_takes_it_from_the_training_groups():
    samples = multi_patient_samples(n_patients=30, anomalies=0)
    samples["source_split"] = np.where(samples["patient_id"] < "P020", "train", "test")
    out = make_splits(samples, SplitConfig(method="predefined", val_fraction=0.25), seed=0)
    test = samples["source_split"] == "test"
    assert (out.loc[test, "split"] == "test").all()  # the dataset's own test set is kept as it is
    val_patients = set(out.loc[out.split == "val", "patient_id"])
    assert 3 <= len(val_patients) <= 7  # a quarter of the 20 training patients
    assert not val_patients & set(out.loc[out.split == "train", "patient_id"])  # grouped: no patient in both
    samples["source_split"] = np.where(samples["patient_id"] < "P018", "train", np.where(samples["patient_id"] < "P020", "val", "test"))
    out = make_splits(samples, SplitConfig(method="predefined", val_fraction=0.25), seed=0)
    assert set(out.loc[out.split == "val", "patient_id"]) == {"P018", "P019"}  # a given validation split is used unchanged


def test_predefined_split_that_puts_a_patient_in_train_and_test_keeps_the_test_whole():
    samples = multi_patient_samples(n_patients=12, anomalies=0)
    samples["source_split"] = np.where(samples["patient_id"] < "P008", "train", "test")
    crossing = samples["patient_id"].isin(["P002", "P005"]) & (samples.index % 2 == 0)
    samples.loc[crossing, "source_split"] = "test"  # two patients with images in both folders (as in the Kermany set)
    out = make_splits(samples, SplitConfig(method="predefined", val_fraction=0.0), seed=0)
    assert_no_leakage(out, samples)
    assert (out.loc[samples["source_split"] == "test", "split"] == "test").all()
    dropped = (out.split == "unused") & (out.label == 0)  # training anomalies are unused anyway
    assert list(out.index[dropped]) == list(samples.index[samples.patient_id.isin(["P002", "P005"]) & ~crossing & (samples.label == 0)])


def test_sample_split_draws_normals_and_each_anomalous_class_separately():
    rows = []  # lesions of 1-2 images: 120 nevus lesions, then classes of 30, 12 and 4 lesions
    for cls, n_lesions in (("nv", 120), ("mel", 30), ("bcc", 12), ("df", 4)):
        for k in range(n_lesions):
            for j in range(1 + k % 2):
                rows.append({"sample_id": f"{cls}{k}_{j}", "patient_id": f"{cls}{k}", "label": int(cls != "nv"), "class": cls})
    samples = pd.DataFrame(rows)
    cfg = SplitConfig(method="sample", test_per_class=10, test_normal=25, test_by_class=True, val_count=20)
    out = make_splits(samples, cfg, seed=3)
    assert_no_leakage(out.assign(grouping="patient"), samples)
    test = samples[out.split == "test"]
    per_class = test["class"].value_counts().to_dict()
    assert 25 <= per_class["nv"] <= 26 and 10 <= per_class["mel"] <= 11 and 10 <= per_class["bcc"] <= 11  # whole lesions: ≥ n, ≤ n + 1
    assert per_class["df"] == 6  # a class with fewer images than test_per_class goes to test whole (4 lesions, 6 images)
    assert (samples.loc[out.split.isin(["train", "val"]), "label"] == 0).all()
    assert 20 <= (out.split == "val").sum() <= 21 and (out.split == "train").sum() == 180 - per_class["nv"] - (out.split == "val").sum()
    assert out.equals(make_splits(samples, cfg, seed=3))  # reproducible


def three_scans() -> pd.DataFrame:
    """Three patients, one series each, cubes on a 16-voxel grid (neighbours overlap), a few anomalies per scan."""
    parts = []
    for p in range(3):
        s = single_patient_samples()
        s["patient_id"], s["series_uid"] = f"LIDC-{p:04d}", f"1.2.{p}"
        s["sample_id"] = [f"p{p}_{i}" for i in s["sample_id"]]
        parts.append(s)
    return pd.concat(parts, ignore_index=True)


def test_leave_one_scan_out_with_validation_blocks():
    """The whole-scan protocol's split: each fold tests one whole patient, trains and validates on normal
    blocks of the other two, never on an anomaly, and no training cube overlaps a validation cube."""
    samples = three_scans()
    tested = []
    for fold in range(3):
        cfg = SplitConfig(method="kfold", n_folds=3, fold=fold, group_by="patient", val_group_by="spatial_block", block_mm=48, val_fraction=0.2)
        splits = make_splits(samples, cfg, seed=0)
        assert_no_leakage(splits, samples)
        test_patients = set(splits.loc[splits.split == "test", "patient_id"])
        assert len(test_patients) == 1
        tested += sorted(test_patients)
        (held,) = test_patients
        own = splits.patient_id == held
        assert (splits.loc[own, "split"] == "test").all()  # the mapped scan is wholly held out
        fit = splits.split.isin(["train", "val"])
        assert (splits.loc[fit, "label"] == 0).all()  # neither training nor selection sees an anomaly
        assert set(splits.loc[splits.split == "val", "patient_id"]) == set(samples.patient_id) - {held}  # blocks of both others
        assert overlapping_pairs(samples, splits, "train", ("val", "test")) == 0
        assert (splits.split == "train").sum() > (splits.split == "val").sum() > 0
    assert sorted(tested) == sorted(samples.patient_id.unique())


def test_validation_block_in_train_and_val_is_leakage():
    samples = three_scans()
    cfg = SplitConfig(method="kfold", n_folds=3, fold=0, group_by="patient", val_group_by="spatial_block", block_mm=48, val_fraction=0.2)
    splits = make_splits(samples, cfg, seed=0)
    block = splits.loc[splits.split == "val", "val_group"].iloc[0]
    tr = splits.index[(splits.split != "val") & (splits.val_group == block)]
    splits.loc[tr[:1], "split"] = "val"
    splits.loc[splits.index[(splits.split == "val") & (splits.val_group == block)][-1:], "split"] = "train"
    with pytest.raises(AssertionError, match="validation block|overlap"):
        assert_no_leakage(splits, samples)
