"""The cube store: the extract stage's shards read back by sample, as one array-like reader.

The extract stage writes every sample's raw cube into a shard (``cubes/<shard>.npy``) and its
shard and row into ``samples.csv``. :class:`SampleCubes` reads the samples it is indexed with from
their shards, normalises them (:func:`preprocessing.intensity.normalise`) and cuts their centre
patch, so no stage holds every cube of a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from pipeline.core import artifacts
from preprocessing.cubes import centre_patch
from preprocessing.intensity import normalise

if TYPE_CHECKING:
    import pandas as pd


class SampleCubes:
    """The cubes of some samples, read from the extract shards on access, normalised with ``norm``
    (``None``: stored values) and cut to their centre ``patch`` when given.

    Indexed like an (N, C, *spatial) array: ``cubes[i]`` is one sample, ``cubes[i:j]`` and
    ``cubes[int array]`` a batch (:func:`pipeline.core.artifacts.read_cube_rows`). Only each
    sample's shard and row are held, so memory is that of the batches being read.
    """

    def __init__(self, run_dir: Path, samples: "pd.DataFrame", norm: dict | None = None, patch: int | None = None) -> None:
        artifacts.check_shard_columns(samples, run_dir)
        self.run_dir, self.norm, self.patch = run_dir, norm, patch
        self.shards, codes = np.unique(samples["shard"].to_numpy(str), return_inverse=True)
        self.codes = codes.ravel().astype(np.int32)
        self.rows = samples["shard_row"].to_numpy(np.int64)
        self._item_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, C, *spatial) of what indexing returns (the first sample is read to learn it; ``(0,)`` without samples)."""
        if self._item_shape is None and len(self):
            self._item_shape = self[0:1].shape[1:]
        return (len(self), *(self._item_shape or ()))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def stored_shape(self) -> tuple[int, ...]:
        """(N, C, *spatial) of the stored cubes, before any centre patch (``(0,)`` without samples)."""
        first = artifacts.read_cube_rows(self.run_dir, self.shards[self.codes[:1]], self.rows[:1])
        return (len(self), *first.shape[1:])

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            if not -len(self) <= index < len(self):
                raise IndexError(f"sample {index} of {len(self)}")
            return self[np.array([index % len(self)])][0]
        if isinstance(index, slice):
            sel = np.arange(*index.indices(len(self)))
        else:
            sel = np.asarray(index)
            sel = np.flatnonzero(sel) if sel.dtype == bool else sel
        if len(sel) == 0:
            return np.zeros((0, *self.shape[1:]), np.float32)
        x = artifacts.read_cube_rows(self.run_dir, self.shards[self.codes[sel]], self.rows[sel])
        x = normalise(x, self.norm) if self.norm is not None else x
        return np.ascontiguousarray(centre_patch(x, self.patch)) if self.patch else x

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive batches of ``size`` samples, in order."""
        return (self[i : i + size] for i in range(0, len(self), size))
