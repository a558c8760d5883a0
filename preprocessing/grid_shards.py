"""The ingested images of a 2D/array dataset in shards: ``grids/images-<k>.npy``.

Image ``i`` of the ingest order belongs to shard ``i // IMAGES_PER_SHARD``. Each shard is one plain
``.npy`` of shape ``(n, C, *spatial)`` float32, the images padded (top-left aligned, zeros) to the
shard's largest size; ``arrays.csv`` gives each image's ``grid_shard``, ``grid_row`` and valid
``grid_shape``. :class:`GridShardWriter` writes a shard as soon as all of its images have arrived
(in any order, from worker processes), so ingest holds one shard's images at a time whatever the
dataset's size, and extract reads the shards back one at a time (:func:`iter_grid_shards`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from pipeline.core import artifacts, io
from pipeline.core.errors import StageError

GRID_COLUMNS = ("grid_shard", "grid_row", "grid_shape")


def shape_text(shape) -> str:
    """A spatial shape as written in ``arrays.csv`` (``"150x200"``)."""
    return "x".join(str(int(n)) for n in shape)


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in str(text).split("x"))


class GridShardWriter:
    """Collects the grids of ``n_items`` images (index → grid, or a failure) and writes each shard once complete.

    ``add(i, grid)`` with ``grid=None`` marks image ``i`` as failed (it leaves no row). After
    :meth:`close`, :attr:`placement` maps each written image index to its ``(shard, row, shape)``.
    """

    def __init__(self, run_dir: Path, n_items: int, spatial_dims: int) -> None:
        self.run_dir, self.n_items, self.dims = run_dir, n_items, spatial_dims
        self.per = artifacts.IMAGES_PER_SHARD
        self.pending: dict[int, dict[int, np.ndarray | None]] = {}
        self.placement: dict[int, tuple[str, int, str]] = {}
        self.paths: list[Path] = []
        self.channels: int | None = None
        # shards are written by one background thread (file writes release the GIL), so the main process goes
        # on receiving images meanwhile: writing was half of the ingest's main-process time
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._writing: Future | None = None

    def _size(self, shard: int) -> int:
        return min(self.per, self.n_items - shard * self.per)

    def add(self, index: int, grid: np.ndarray | None) -> None:
        if grid is not None:
            grid = np.asarray(grid, np.float32)
            if grid.ndim != self.dims + 1:
                raise StageError(f"ingest: image {index} has shape {grid.shape}; expected (C, *spatial) with {self.dims} spatial dims")
            if self.channels is None:
                self.channels = grid.shape[0]
            elif grid.shape[0] != self.channels:
                raise StageError(f"ingest: images have different channel counts ({self.channels} and {grid.shape[0]})")
        shard = index // self.per
        got = self.pending.setdefault(shard, {})
        got[index] = grid
        if len(got) == self._size(shard):
            self._write(shard, self.pending.pop(shard))

    def _write(self, shard: int, got: dict[int, np.ndarray | None]) -> None:
        ok = [i for i in sorted(got) if got[i] is not None]
        if not ok:
            return
        name = artifacts.image_shard(shard * self.per)
        shapes = np.array([got[i].shape[1:] for i in ok])
        padded = np.zeros((len(ok), self.channels, *shapes.max(0)), np.float32)
        for row, i in enumerate(ok):
            padded[(row, slice(None), *[slice(0, n) for n in got[i].shape[1:]])] = got[i]
            self.placement[i] = (name, row, shape_text(got[i].shape[1:]))
        p = artifacts.path("grids", self.run_dir, shard=name)
        self._wait()  # at most one shard being written while the next one fills: memory stays at two shards
        self._writing = self._pool.submit(io.write_npy, p, padded)
        self.paths.append(p)

    def _wait(self) -> None:
        if self._writing is not None:
            self._writing.result()  # re-raises a failed write (disk full) here
            self._writing = None

    def close(self) -> list[Path]:
        """Check every image arrived, delete shards of an earlier ingest not written now; the shards written."""
        self._wait()
        self._pool.shutdown()
        if self.pending:
            missing = sum(self._size(k) - len(v) for k, v in self.pending.items())
            raise StageError(f"ingest: {missing} image(s) never returned from the workers")
        artifacts.remove_stale_shards(self.run_dir, self.paths, "grids")
        return list(self.paths)

    def columns(self, indices) -> dict[str, list]:
        """``grid_shard``, ``grid_row`` and ``grid_shape`` of the given (written) images, for ``arrays.csv``."""
        where = [self.placement[i] for i in indices]
        return {c: [w[k] for w in where] for k, c in enumerate(GRID_COLUMNS)}


def check_grid_columns(table: pd.DataFrame, run_dir: Path) -> None:
    missing = [c for c in GRID_COLUMNS if c not in table.columns]
    if missing:
        raise StageError(f"{artifacts.path('arrays_table', run_dir)} has no column(s) {', '.join(missing)}: "
                         "it was written by an older version; run the ingest stage again (pipeline ingest --force)")


def iter_grid_shards(run_dir: Path, table: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame, np.ndarray]]:
    """Per grid shard, in order: its name, its rows of ``table`` (``arrays.csv``) and its images ``(n, C, *spatial)``.

    Only the rows the table names are returned, in table order, so one shard is in memory at a time.
    """
    check_grid_columns(table, run_dir)
    for name, rows in table.groupby("grid_shard", sort=True):
        images = artifacts.read_cube_rows(run_dir, [name] * len(rows), rows["grid_row"].to_numpy(np.int64), "grids")
        yield str(name), rows, images


def read_grid(run_dir: Path, row: pd.Series) -> np.ndarray:
    """One ingested image ``(C, *shape)`` on its own grid (the padding removed), from its ``arrays.csv`` row."""
    image = artifacts.read_cube_rows(run_dir, [row["grid_shard"]], [int(row["grid_row"])], "grids")[0]
    return image[(slice(None), *[slice(0, n) for n in parse_shape(row["grid_shape"])])]


def read_all_grids(run_dir: Path) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """``arrays.csv`` and every ingested image on its own grid, in table order. Loads everything: for tests and small runs."""
    table = artifacts.read_arrays_table(run_dir)
    return table, [read_grid(run_dir, row) for _, row in table.iterrows()]
