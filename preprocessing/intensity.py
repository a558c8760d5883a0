"""Intensity normalisation: the one definition shared by training, scoring and new data.

A normalisation is a small dict stored in the model checkpoint (``normalisation``), so new data
are scored with exactly the values used in training:

- ``window``: clip to ``hu_window`` [lo, hi] (HU for CT; display units for images) and scale to [0, 1];
- ``none``: values as stored (float);
- ``minmax``: each sample to [0, 1] by its own minimum and maximum (all channels together);
- ``zscore``: (x − mean) / std per channel, with mean and std of the **training normals** only
  (computed by the train stage, streaming, see :func:`fit_normalisation`).

The stages read cubes through :class:`preprocessing.cube_store.SampleCubes`, which normalises
them with :func:`normalise`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

MODES = ("window", "none", "minmax", "zscore")
STATS_BATCH = 128  # samples per read of the two z-score passes (32³ CT: 33 MB as float64)


def fit_normalisation(mode: str, window: tuple[float, float], cube_size: int, train_normals=None) -> dict:
    """The normalisation dict; ``zscore`` needs the raw training normals: an (N, C, *spatial) array or a
    :class:`preprocessing.cube_store.SampleCubes` (anything with ``len()`` and slices), read in batches (:func:`channel_stats`)."""
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
