"""Cube shards and streamed reads (issue 14): rows read at their offset, residual rows read forward,
npz members written a block at a time, samples indexed like an array, z-score statistics in passes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.core import artifacts, io
from pipeline.core.errors import StageError
from preprocessing.cube_store import SampleCubes
from preprocessing.cubes import centre_patch
from preprocessing.intensity import channel_stats, fit_normalisation, normalise

RNG = np.random.default_rng(0)
A = RNG.integers(-1000, 400, (5, 1, 6, 6, 6)).astype(np.int16)
B = RNG.integers(-1000, 400, (3, 1, 6, 6, 6)).astype(np.int16)


def _run(tmp_path) -> tuple:
    """Two shards and a samples table listing their rows out of shard order."""
    artifacts.write_cube_shard(tmp_path, "1.2.3", A)
    artifacts.write_cube_shard(tmp_path, "series-abc", B)
    samples = pd.DataFrame({"sample_id": [f"s{i}" for i in range(8)], "shard": ["series-abc", "1.2.3"] * 4,
                            "shard_row": [2, 4, 0, 0, 1, 3, 2, 1]})
    expected = np.stack([(B if s == "series-abc" else A)[r] for s, r in zip(samples["shard"], samples["shard_row"])])
    return samples, expected


def test_rows_are_read_in_the_order_asked_across_shards(tmp_path):
    samples, expected = _run(tmp_path)
    got = artifacts.read_cube_rows(tmp_path, samples["shard"], samples["shard_row"])
    assert got.dtype == np.int16 and np.array_equal(got, expected)
    assert np.array_equal(artifacts.read_cube_rows(tmp_path, ["1.2.3", "1.2.3"], [3, 3]), A[[3, 3]])
    assert artifacts.read_cube_rows(tmp_path, [], []).shape == (0,)
    assert (tmp_path / "cubes" / "1.2.3.npy").read_bytes() == _npy_bytes(A)  # a plain .npy, deterministic


def _npy_bytes(a: np.ndarray) -> bytes:
    import io as _io

    buf = _io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def test_bad_rows_and_shards_are_clear_errors(tmp_path):
    _run(tmp_path)
    with pytest.raises(StageError, match="row 5 requested, the shard holds 5"):
        artifacts.read_cube_rows(tmp_path, ["1.2.3"], [5])
    with pytest.raises(StageError, match="run the extract stage first"):
        artifacts.read_cube_rows(tmp_path, ["9.9"], [0])
    p = tmp_path / "cubes" / "1.2.3.npy"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(StageError, match="truncated at row 4"):
        artifacts.read_cube_rows(tmp_path, ["1.2.3"], [4])
    (tmp_path / "cubes" / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(StageError, match="not a cube shard"):
        artifacts.read_cube_rows(tmp_path, ["bad"], [0])
    with pytest.raises(StageError, match=r"shard_row column .*run the extract stage again"):
        artifacts.check_shard_columns(pd.DataFrame({"sample_id": ["a"], "shard": ["x"]}), tmp_path)


def test_a_shard_name_cannot_leave_the_run(tmp_path):
    run = tmp_path / "run"
    artifacts.write_cube_shard(run, "../../escape", A)
    assert [p.name for p in (run / "cubes").iterdir()] == ["escape.npy"]


def test_stale_shards_are_removed(tmp_path):
    keep = artifacts.write_cube_shard(tmp_path, "1.2.3", A)
    artifacts.write_cube_shard(tmp_path, "4.5", B)
    artifacts.remove_stale_shards(tmp_path, [keep])
    assert [p.name for p in (tmp_path / "cubes").iterdir()] == ["1.2.3.npy"]


def test_sample_cubes_index_like_an_array(tmp_path):
    samples, raw = _run(tmp_path)
    norm = fit_normalisation("window", (-1000, 400), 6)
    want = normalise(raw, norm)
    cubes = SampleCubes(tmp_path, samples, norm)
    assert len(cubes) == 8 and cubes.shape == (8, 1, 6, 6, 6) and cubes.ndim == 5
    assert np.array_equal(cubes[3], want[3]) and np.array_equal(cubes[-1], want[-1])
    assert np.array_equal(cubes[2:7:2], want[2:7:2]) and np.array_equal(cubes[np.array([6, 0])], want[[6, 0]])
    assert np.array_equal(cubes[want.sum((1, 2, 3, 4)) > 0], want[want.sum((1, 2, 3, 4)) > 0])
    assert cubes[5:5].shape == (0, 1, 6, 6, 6)
    with pytest.raises(IndexError):
        cubes[8]
    patches = SampleCubes(tmp_path, samples, norm, patch=4)
    assert np.array_equal(patches[1:4], centre_patch(want, 4)[1:4]) and patches[1:4].flags.c_contiguous
    assert patches.shape == (8, 1, 4, 4, 4) and patches.stored_shape() == (8, 1, 6, 6, 6)
    assert np.array_equal(SampleCubes(tmp_path, samples)[:], raw)  # no normalisation: stored values
    assert SampleCubes(tmp_path, samples.iloc[:0]).shape == (0,)


def test_streamed_zscore_statistics_match_numpy(tmp_path):
    x = RNG.normal(3.0, 2.0, (40, 3, 5, 5)).astype(np.float32)
    axes = (0, 2, 3)
    mean, std = channel_stats(x, batch=64)  # one batch: numpy's own reductions
    assert np.array_equal(mean, x.astype(np.float64).mean(axis=axes)) and np.array_equal(std, x.astype(np.float64).std(axis=axes))
    mean, std = channel_stats(x, batch=7)  # several: the partial sums round differently
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(std, x.astype(np.float64).std(axis=axes), rtol=1e-12)
    samples, raw = _run(tmp_path)
    norm = fit_normalisation("zscore", (0, 1), 6, SampleCubes(tmp_path, samples))
    assert norm["mean"] == raw.astype(np.float64).mean(axis=(0, 2, 3, 4)).tolist()


def test_npz_rows_stream_gives_the_bytes_of_a_whole_array(tmp_path):
    a = RNG.random((37, 1, 4, 4, 4)).astype(np.float16)
    io.write_npz(tmp_path / "whole.npz", residual=a, sample_id=np.array([f"s{i}" for i in range(37)]), offset=np.array(2))
    with io.npz_stream(tmp_path / "stream.npz") as z:
        with z.rows("residual", a.shape, np.float16) as write:
            for i in range(0, 37, 16):
                write(a[i : i + 16])
        z.put("sample_id", np.array([f"s{i}" for i in range(37)]))
        z.put("offset", np.array(2))
    assert (tmp_path / "stream.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()
    with pytest.raises(ValueError, match="3 rows written of 4"):
        with io.npz_stream(tmp_path / "short.npz") as z, z.rows("residual", (4, 2), np.float16) as write:
            write(np.zeros((3, 2)))
    assert not (tmp_path / "short.npz").exists()  # atomic: nothing left under the final name


def test_npz_rows_read_forward_in_any_order(tmp_path):
    a = RNG.random((150, 1, 3, 3)).astype(np.float16)
    io.write_npz(tmp_path / "residuals.npz", residual=a, offset=np.array(1))
    with artifacts.NpzRows("residuals", tmp_path, "residual", "score first") as rows:
        assert rows.shape == a.shape and rows.ndim == 4 and not rows.has("reconstruction")
        assert np.array_equal(rows.read([140, 3, 3, 77]), a[[140, 3, 3, 77]])
        assert np.array_equal(rows.read([2]), a[[2]])  # before the last row read: the stream starts again
    assert int(artifacts.read_npz_member("residuals", tmp_path, "offset", "")) == 1


def _sharded_run(run, n_series: int, per_series: int) -> int:
    """A run folder with ``n_series`` shards of random int16 cubes, samples.csv and splits.csv (all train but 12 val normals)."""
    rng, rows = np.random.default_rng(3), []
    for s in range(n_series):
        artifacts.write_cube_shard(run, f"1.2.{s}", rng.integers(-1000, 400, (per_series, 1, 32, 32, 32)).astype(np.int16))
        rows += [{"sample_id": f"s{s}-{r:03d}", "shard": f"1.2.{s}", "shard_row": r} for r in range(per_series)]
    samples = pd.DataFrame(rows)
    artifacts.write_table("samples", run, samples)
    split = ["val" if i % 25 == 0 else "train" for i in range(len(samples))]
    artifacts.write_table("splits", run, samples[["sample_id"]].assign(split=split, label=0))
    return split.count("train")


def test_training_streams_the_shards(tmp_path, monkeypatch):
    """The train stage never reads more than one batch of cubes at once (so its memory does not grow with the run):
    loading all training cubes in one read (as from the old cubes.npz) fails this test."""
    from conftest import validate

    from models import training

    n_train = _sharded_run(tmp_path, n_series=3, per_series=100)
    reads, real = [], artifacts.read_cube_rows
    monkeypatch.setattr(artifacts, "read_cube_rows", lambda run_dir, shards, rows: reads.append(len(rows)) or real(run_dir, shards, rows))
    cfg = validate({"model": {"name": "vae3d", "latent_dim": 4, "channels": [4, 8], "strides": [2, 2]},
                    "extract": {"normalise": "zscore"},
                    "train": {"epochs": 1, "batch_size": 16, "patch_size": 28, "patience": 100}, "run": {"threads": 1}}, base_dir=tmp_path)
    result = training.run(cfg, tmp_path)
    assert result.counts["train_samples"] == n_train > training.PATCH_BATCH
    assert max(reads) <= training.PATCH_BATCH < n_train  # statistics, epochs, validation, post-training fit: batch by batch
    assert sum(reads) >= 3 * n_train  # z-score passes (2) and the epoch (1) each read every training cube
    assert (tmp_path / "model" / "model.pt").is_file()


def test_legacy_cubes_npz_run_is_a_clear_error(tmp_path):
    """A run folder of a version before sharding (cubes.npz, samples.csv without shard columns): one clear error."""
    io.write_npz(tmp_path / "cubes.npz", cubes=A, sample_id=np.array([f"s{i}" for i in range(5)]))
    artifacts.write_table("samples", tmp_path, pd.DataFrame({"sample_id": [f"s{i}" for i in range(5)], "label": 0}))
    with pytest.raises(StageError, match=r"no shard, shard_row column .*pipeline extract --force"):
        SampleCubes(tmp_path, artifacts.read_samples(tmp_path, ["sample_id", *artifacts.SHARD_COLUMNS]))
