"""Splitting rules: stratified, grouped train/val/test (holdout, k-fold, predefined, fixed-size draws).

Groups are patients; with a single patient (the demo) or ``group_by: spatial_block``, groups are
spatial blocks of ``block_mm`` within each series, so neighbouring tissue does not straddle
splits. Training and validation cubes that physically overlap a held-out cube of the same series
are moved to ``buffer`` and never used. :func:`assert_no_leakage` checks both properties and is
called before the file is written.

``split`` values: ``train`` (normals, plus the contamination fraction of anomalies), ``val``,
``test``, ``buffer`` (overlaps held-out cubes) and ``unused`` (anomalies in training groups that
are not part of the contamination).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.core import artifacts
from pipeline.core.errors import StageError
from pipeline.core.results import StageResult
from pipeline.core.schema import Config, SplitConfig

# (split, held-out splits its cubes must not overlap): checked by the buffer step and the leakage assertion
OVERLAP_RULES = (("train", ("val", "test")), ("val", ("test",)))


def assign_groups(samples: pd.DataFrame, cfg: SplitConfig) -> tuple[pd.Series, str]:
    """Group label per sample and the grouping used (``patient`` or ``spatial_block``)."""
    mode = cfg.group_by
    has_geometry = "x_mm" in samples.columns
    if mode == "auto":
        mode = "spatial_block" if samples["patient_id"].nunique() == 1 and has_geometry else "patient"
    if mode == "spatial_block" and not has_geometry:
        raise StageError("split.group_by: spatial_block needs cube positions; these samples have none (use patient)")
    if mode == "patient":
        return samples["patient_id"].astype(str), mode
    block = np.floor(samples[["x_mm", "y_mm", "z_mm"]].to_numpy(float) / cfg.block_mm).astype(int)
    ids = [f"{p}|{s}|{b[0]}_{b[1]}_{b[2]}" for p, s, b in zip(samples["patient_id"], samples["series_uid"], block)]
    return pd.Series(ids, index=samples.index), mode


def _group_folds(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int, what: str) -> np.ndarray:
    """Fold index per sample from StratifiedGroupKFold (stratified by label, grouped)."""
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise StageError(f"split: only {n_groups} group(s) for {what}, need at least {n_splits}; lower the number of folds or add data")
    fold = np.full(len(labels), -1)
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for k, (_, idx) in enumerate(sgkf.split(np.zeros(len(labels)), labels, groups)):
        fold[idx] = k
    return fold


def _drop_crossing_groups(split: np.ndarray, idx: np.ndarray, groups: pd.Series) -> None:
    """A dataset's own split that puts one patient in two splits (the Kermany chest X-ray set has
    patients in both train/ and test/): the patient's images outside its most held-out split (test,
    then val) become ``unused``, so the given test set stays whole and nothing is trained on a test patient."""
    g = groups.to_numpy()
    for held_out in ("test", "val"):
        in_held = set(g[idx][split[idx] == held_out])
        later = ("train", "val") if held_out == "test" else ("train",)
        cross = idx[np.isin(split[idx], later) & np.isin(g[idx], list(in_held))]
        split[cross] = "unused"


def _validation_from_train(split: np.ndarray, idx: np.ndarray, labels: np.ndarray, groups: pd.Series, cfg: SplitConfig, seed: int) -> None:
    """A predefined split without validation data (the Kermany chest X-ray layout has only train/ and
    test/): ``val_fraction`` of the training groups become ``val``, grouped and stratified as in holdout."""
    train = idx[split[idx] == "train"]
    if cfg.val_fraction <= 0 or (split[idx] == "val").any() or len(np.unique(groups.to_numpy()[train])) < 2:
        return
    vfold = _group_folds(labels[train], groups.to_numpy()[train], max(2, round(1 / cfg.val_fraction)), seed + 1, "the validation split")
    split[train[vfold == 0]] = "val"


def make_splits(samples: pd.DataFrame, cfg: SplitConfig, seed: int) -> pd.DataFrame:
    """Assign every sample to train/val/test/buffer/unused (see module docstring)."""
    groups, mode = assign_groups(samples, cfg)
    labels = samples["label"].to_numpy(int)
    out = pd.DataFrame({"sample_id": samples["sample_id"], "patient_id": samples["patient_id"], "group": groups, "label": labels})
    split = np.array(["train"] * len(out), dtype=object)
    fold = np.full(len(out), -1)
    pool = np.ones(len(out), bool)
    if cfg.anomalies_to_test:
        anomalous_groups = set(groups[labels == 1])
        to_test = groups.isin(anomalous_groups).to_numpy()
        split[to_test] = "test"
        pool &= ~to_test
    idx = np.flatnonzero(pool)
    if cfg.method == "test_only":  # batch scoring of new data with a trained model
        out["split"], out["fold"], out["grouping"] = "test", -1, mode
        return out
    if cfg.method == "sample":
        out["split"], out["fold"], out["grouping"] = _sample_split(samples, out, cfg, seed), -1, mode
        _mark_training_anomalies(out, cfg.contamination, seed)
        return out
    if cfg.method == "predefined":
        if "source_split" not in samples.columns or not samples["source_split"].isin(["train", "val", "test"]).any():
            raise StageError("split.method: predefined needs a dataset with its own train/val/test split (split-prefixed array keys)")
        split[idx] = samples["source_split"].to_numpy(object)[idx]
        _drop_crossing_groups(split, idx, groups)
        _validation_from_train(split, idx, labels, groups, cfg, seed)
        out["split"] = split
        out["fold"] = fold
        _mark_training_anomalies(out, cfg.contamination, seed)
        out["grouping"] = mode
        return out
    if cfg.method == "kfold":
        fold[idx] = _group_folds(labels[idx], groups.to_numpy()[idx], cfg.n_folds, seed, "k-fold")
        test_fold = cfg.fold
    else:
        fold[idx] = _group_folds(labels[idx], groups.to_numpy()[idx], max(2, round(1 / cfg.test_fraction)), seed, "the test split")
        test_fold = 0
    split[idx[fold[idx] == test_fold]] = "test"
    rest = idx[fold[idx] != test_fold]
    val_groups = groups
    if cfg.val_group_by == "spatial_block":
        val_groups = assign_groups(samples, replace(cfg, group_by="spatial_block"))[0]
        out["val_group"] = val_groups
    if cfg.val_fraction > 0 and len(rest):
        vfold = _group_folds(labels[rest], val_groups.to_numpy()[rest], max(2, round(1 / cfg.val_fraction)), seed + 1, "the validation split")
        split[rest[vfold == 0]] = "val"
        if cfg.val_group_by == "spatial_block":  # validation blocks lie in training patients: their anomalies are neither
            split[rest[(vfold == 0) & (labels[rest] == 1)]] = "unused"
    out["split"] = split
    out["fold"] = fold
    _buffer_overlaps(out, samples)  # first, so the contamination fraction holds for what is trained on
    _mark_training_anomalies(out, cfg.contamination, seed)
    out["grouping"] = mode
    return out


def _draw_groups(groups: pd.Series, candidates: np.ndarray, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """Mask of whole groups, drawn at random from ``candidates`` until at least ``n`` samples."""
    uniq = rng.permutation(pd.unique(groups[candidates]))
    sizes = groups[candidates].value_counts().reindex(uniq).to_numpy()
    take = uniq[: int(np.searchsorted(np.cumsum(sizes), n) + 1)] if n > 0 else uniq[:0]
    if sizes.sum() < n:
        raise StageError(f"split: {what} needs {n} samples, only {int(sizes.sum())} available")
    return candidates & groups.isin(take).to_numpy()


def _anomaly_pools(samples: pd.DataFrame, candidates: np.ndarray, by_class: bool) -> list[tuple[str, np.ndarray]]:
    """The anomalous candidates as one pool, or one pool per class (sorted, so the draws are reproducible)."""
    if not by_class:
        return [("", candidates)]
    cls = samples["class"].astype(str).to_numpy()
    return [(c, candidates & (cls == c)) for c in sorted(set(cls[candidates]))]


def _sample_split(samples: pd.DataFrame, out: pd.DataFrame, cfg: SplitConfig, seed: int) -> np.ndarray:
    """``method: sample``: ``test_normal`` (default ``test_per_class``) normals and ``test_per_class``
    anomalies for test (with ``test_by_class``: that many of each anomalous class, all of a class that
    has fewer; HAM10000: 250 nevi + 100 per diagnosis), drawn from ``test_source``, then ``train_count``
    and ``val_count`` normals; the remaining anomalies go to ``train`` so the contamination step can
    keep its fraction (the rest become ``unused``). Groups stay whole."""
    rng = np.random.default_rng(seed)
    groups, label = out["group"], out["label"].to_numpy()
    group_has_anomaly = groups.map(out.groupby("group")["label"].max()).to_numpy() == 1
    free = np.ones(len(out), bool)
    if cfg.test_source is not None:
        if "source" not in samples.columns or not (samples["source"] == cfg.test_source).any():
            raise StageError(f"split.test_source: no samples from source {cfg.test_source!r}")
        from_source = (samples["source"] == cfg.test_source).to_numpy()
    else:
        from_source = free
    split = np.array(["unused"] * len(out), dtype=object)
    n_normal = cfg.test_normal if cfg.test_normal is not None else cfg.test_per_class
    pick = _draw_groups(groups, free & from_source & ~group_has_anomaly, n_normal, rng, "the normal test draw")
    split[pick], free = "test", free & ~pick
    for cls, pool in _anomaly_pools(samples, free & from_source & group_has_anomaly, cfg.test_by_class):
        n = min(cfg.test_per_class, int(pool.sum())) if cfg.test_by_class else cfg.test_per_class
        pick = _draw_groups(groups, pool, n, rng, f"the anomalous test draw{f' of class {cls}' if cls else ''}")
        split[pick], free = "test", free & ~pick
    normal_free = free & ~group_has_anomaly
    n_train = cfg.train_count if cfg.train_count is not None else int(normal_free.sum()) - cfg.val_count
    pick = _draw_groups(groups, normal_free, n_train, rng, "split.train_count")
    split[pick], free = "train", free & ~pick
    pick = _draw_groups(groups, free & ~group_has_anomaly, cfg.val_count, rng, "split.val_count")
    split[pick], free = "val", free & ~pick
    split[free & (label == 1)] = "train"  # candidates for contamination; _mark_training_anomalies keeps its fraction
    return split


def _mark_training_anomalies(out: pd.DataFrame, contamination: float, seed: int) -> None:
    """Keep a ``contamination`` fraction of anomalies in train; the other train anomalies → unused."""
    train_anom = np.flatnonzero((out["split"] == "train").to_numpy() & (out["label"] == 1).to_numpy())
    n_normal = int(((out["split"] == "train") & (out["label"] == 0)).sum())
    n_keep = int(round(contamination * n_normal / (1 - contamination))) if contamination > 0 else 0
    if n_keep > len(train_anom):
        raise StageError(f"split.contamination={contamination}: needs {n_keep} training anomalies, only {len(train_anom)} available")
    keep = np.random.default_rng(seed).choice(train_anom, n_keep, replace=False) if n_keep else []
    drop = np.setdiff1d(train_anom, keep)
    out.loc[out.index[drop], "split"] = "unused"


def _overlaps(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """For each row of ``a``: does its cube overlap any cube of ``b`` in the same series?"""
    hit = np.zeros(len(a), bool)
    if "start_i" not in a.columns:  # array datasets: separate images, nothing can overlap
        return hit
    for series, ga in a.groupby("series_uid"):
        gb = b[b["series_uid"] == series]
        if len(gb) == 0:
            continue
        sa = ga[["start_i", "start_j", "start_k"]].to_numpy()
        sb = gb[["start_i", "start_j", "start_k"]].to_numpy()
        size = np.maximum(ga["size"].to_numpy()[:, None], gb["size"].to_numpy()[None, :])
        ov = (np.abs(sa[:, None, :] - sb[None, :, :]) < size[..., None]).all(-1).any(1)
        hit[a.index.get_indexer(ga.index)] = ov
    return hit


def _buffer_overlaps(out: pd.DataFrame, samples: pd.DataFrame) -> None:
    """Train/val cubes overlapping a held-out cube (val or test) of another split → ``buffer``."""
    geo = samples.set_index(out.index)
    for inner, outer in OVERLAP_RULES:
        a = geo[out["split"] == inner]
        b = geo[out["split"].isin(outer)]
        hit = _overlaps(a, b)
        out.loc[a.index[hit], "split"] = "buffer"


def assert_no_leakage(splits: pd.DataFrame, samples: pd.DataFrame) -> None:
    """Raise if a group (patient or block) spans train/val/test, or a train cube overlaps a held-out one.

    With validation grouped by spatial blocks (a ``val_group`` column), a group may span train and val,
    never test; a validation block may not span train and val."""
    used = splits[splits["split"].isin(["train", "val", "test"])]
    by_blocks = "val_group" in used.columns
    held = used["split"].where(used["split"] == "test", "train|val") if by_blocks else used["split"]  # with val blocks: test against the rest
    per_group = held.groupby(used["group"]).nunique()
    bad = per_group[per_group > 1]
    if len(bad):
        raise AssertionError(f"split leakage: group(s) {list(bad.index[:5])} appear in more than one split")
    if by_blocks:
        per_block = used[used["split"] != "test"].groupby("val_group")["split"].nunique()
        if (per_block > 1).any():
            raise AssertionError(f"split leakage: validation block(s) {list(per_block[per_block > 1].index[:5])} in train and val")
    if splits["grouping"].iloc[0] == "patient":
        per_patient = held.groupby(used["patient_id"]).nunique()
        if (per_patient > 1).any():
            raise AssertionError(f"split leakage: patient(s) {list(per_patient[per_patient > 1].index[:5])} in more than one split")
    geo = samples.set_index(splits.index)
    for inner, outer in OVERLAP_RULES:
        hit = _overlaps(geo[splits["split"] == inner], geo[splits["split"].isin(outer)])
        if hit.any():
            raise AssertionError(f"split leakage: {int(hit.sum())} {inner} cube(s) overlap held-out cubes")


def split(cfg: Config, run_dir: Path) -> StageResult:
    """Make the splits of the run's samples, check them for leakage, write ``splits.csv``."""
    samples = artifacts.read_samples(run_dir)
    splits = make_splits(samples, cfg.split, cfg.run.seed)
    assert_no_leakage(splits, samples)
    result = StageResult(outputs=[artifacts.write_table("splits", run_dir, splits)])
    for (name, label), n in splits.groupby(["split", "label"]).size().items():
        result.counts[f"{name}_{'anomalous' if label else 'normal'}"] = int(n)
    result.counts["groups"] = int(splits["group"].nunique())
    result.extra["grouping"] = splits["grouping"].iloc[0]
    if result.counts.get("train_normal", 0) == 0 and cfg.split.method != "test_only":
        raise StageError("split: no normal samples in the training split")
    return result
