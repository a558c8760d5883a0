"""Intensity normalisation: the one definition shared by training, scoring and new data.

A normalisation is a small dict stored in the model checkpoint (``normalisation``), so new data
are scored with exactly the values used in training:

- ``window``: clip to ``hu_window`` [lo, hi] (HU for CT; display units for images) and scale to [0, 1];
- ``none``: values as stored (float);
- ``minmax``: each sample to [0, 1] by its own minimum and maximum (all channels together);
- ``zscore``: (x − mean) / std per channel, with mean and std of the **training normals** only
  (computed by the train stage, streaming, see :func:`fit_normalisation`).

The stages read cubes through :class:`SampleCubes`, which reads the samples it is indexed with
from the extract stage's shards and normalises them, so no stage holds every cube of a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from pipeline.core import artifacts
from preprocessing.cubes import centre_patch

if TYPE_CHECKING:
    import pandas as pd

MODES = ("window", "none", "minmax", "zscore")
STATS_BATCH = 128  # samples per read of the two z-score passes (32³ CT: 33 MB as float64)


def fit_normalisation(mode: str, window: tuple[float, float], cube_size: int, train_normals=None) -> dict:
    """The normalisation dict; ``zscore`` needs the raw training normals: an (N, C, *spatial) array or a
    :class:`SampleCubes` (anything with ``len()`` and slices), read in batches (:func:`channel_stats`)."""
    norm = {"hu_window": [float(v) for v in window], "mode": mode, "cube_size": int(cube_size)}
    if mode == "zscore":
        if train_normals is None or len(train_normals) == 0:
            raise ValueError("zscore normalisation needs the training normals")
        mean, std = channel_stats(train_normals)
        norm["mean"] = mean.tolist()
        norm["std"] = np.maximum(std, 1e-8).tolist()  # a constant channel must not divide by zero
    return norm


def channel_stats(x, batch: int = STATS_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of (N, C, *spatial) samples, in float64, in two passes
    of ``batch`` samples (memory: one batch). The formulas are ``np.mean``'s and ``np.std``'s, so up
    to ``batch`` samples give exactly their values; more differ only by the rounding of the partial sums."""
    def chunks() -> Iterator[np.ndarray]:
        return (np.asarray(x[i : i + batch], np.float64) for i in range(0, len(x), batch))

    total, count, axes = 0.0, 0, ()
    for c in chunks():
        axes = (0, *range(2, c.ndim))
        total, count = total + c.sum(axis=axes), count + c.size // c.shape[1]
    mean = total / count
    squares = 0.0
    for c in chunks():
        d = c - mean.reshape((1, -1) + (1,) * (c.ndim - 2))
        squares = squares + (d * d).sum(axis=axes)
    return mean, np.sqrt(squares / count)


def normalise(raw: np.ndarray, norm: dict) -> np.ndarray:
    """Map stored values (N, C, *spatial) to model range with a normalisation dict."""
    x = np.asarray(raw, dtype=np.float32)
    mode = norm["mode"]
    if mode == "none":
        return x
    if mode == "window":
        lo, hi = norm["hu_window"]
        return (np.clip(x, lo, hi) - lo) / (hi - lo)
    if mode == "minmax":
        axes = tuple(range(1, x.ndim))
        lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
        return ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)
    if mode == "zscore":
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, std = np.asarray(norm["mean"], np.float32).reshape(shape), np.asarray(norm["std"], np.float32).reshape(shape)
        if mean.shape[1] != x.shape[1]:
            raise ValueError(f"zscore normalisation has {mean.shape[1]} channel(s), data have {x.shape[1]}")
        return (x - mean) / std
    raise ValueError(f"unknown normalisation mode {mode!r}; expected one of {', '.join(MODES)}")


def denormalise(x: np.ndarray, norm: dict) -> np.ndarray:
    """One sample ``(C, *spatial)`` back from model range to stored units, for display.

    Exact for ``zscore`` (per channel, so RGB keeps its colours), ``window`` (inside the window)
    and ``none``; ``minmax`` stays in [0, 1] (the per-sample scale is not kept).
    """
    x = np.asarray(x, np.float32)
    if norm["mode"] == "zscore":
        shape = (-1,) + (1,) * (x.ndim - 1)
        return x * np.asarray(norm["std"], np.float32).reshape(shape) + np.asarray(norm["mean"], np.float32).reshape(shape)
    if norm["mode"] == "window":
        lo, hi = norm["hu_window"]
        return x * (hi - lo) + lo
    return x


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
