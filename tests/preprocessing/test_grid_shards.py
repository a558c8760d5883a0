"""The ingest grid shards: written as images arrive (any order), holes for failed images, read back exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.core import artifacts
from pipeline.core.errors import StageError
from preprocessing.grid_shards import GridShardWriter, iter_grid_shards, read_grid


def test_shards_are_written_when_complete_in_any_order_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "IMAGES_PER_SHARD", 3)
    rng = np.random.default_rng(0)
    grids = [rng.random((2, 4 + i % 3, 5 + i)).astype(np.float32) for i in range(7)]
    stale = artifacts.path("grids", tmp_path, shard="images-00099")
    stale.parent.mkdir(parents=True)
    np.save(stale, np.zeros((1, 2, 2, 2), np.float32))
    writer = GridShardWriter(tmp_path, 7, 2)
    for i in (4, 0, 2):
        writer.add(i, grids[i])
    writer.add(1, None)  # a failed image: a hole, no row
    assert [p.name for p in writer.paths] == ["images-00000.npy"]  # shard 0 complete: written already, shard 1 waits for 3 and 5
    for i in (6, 5, 3):
        writer.add(i, grids[i])
    paths = writer.close()
    assert sorted(p.name for p in paths) == ["images-00000.npy", "images-00001.npy", "images-00002.npy"]
    assert not stale.exists()  # a shard of an earlier ingest is removed
    ok = [0, 2, 3, 4, 5, 6]
    cols = writer.columns(ok)
    assert cols["grid_shard"] == ["images-00000", "images-00000", "images-00001", "images-00001", "images-00001", "images-00002"]
    assert cols["grid_row"] == [0, 1, 0, 1, 2, 0]
    table = pd.DataFrame({"sample_id": [f"s{i}" for i in ok], **cols})
    for i, (_, row) in zip(ok, table.iterrows()):
        np.testing.assert_array_equal(read_grid(tmp_path, row), grids[i])  # exact, padding removed
    seen = [(name, len(rows), images.shape) for name, rows, images in iter_grid_shards(tmp_path, table)]
    assert seen == [("images-00000", 2, (2, 2, 6, 7)), ("images-00001", 3, (3, 2, 6, 10)), ("images-00002", 1, (1, 2, 4, 11))]


def test_mixed_channel_counts_and_missing_images_are_stage_errors(tmp_path):
    writer = GridShardWriter(tmp_path, 3, 2)
    writer.add(0, np.zeros((1, 4, 4), np.float32))
    with pytest.raises(StageError, match="different channel counts"):
        writer.add(1, np.zeros((3, 4, 4), np.float32))
    with pytest.raises(StageError, match="never returned"):
        writer.close()
