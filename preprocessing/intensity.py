"""Intensity normalisation: the one definition shared by training, scoring and new data.

A normalisation is a small dict stored in the model checkpoint (``normalisation``), so new data
are scored with exactly the values used in training:

- ``window``: clip to ``hu_window`` [lo, hi] (HU for CT; display units for images) and scale to [0, 1];
- ``none``: values as stored (float);
- ``minmax``: each sample to [0, 1] by its own minimum and maximum (all channels together);
- ``zscore``: (x − mean) / std per channel, with mean and std of the **training normals** only
  (computed by the train stage, see :func:`fit_normalisation`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core import artifacts

MODES = ("window", "none", "minmax", "zscore")


def fit_normalisation(mode: str, window: tuple[float, float], cube_size: int, train_normals: np.ndarray | None = None) -> dict:
    """The normalisation dict; ``zscore`` needs the raw training normals (N, C, *spatial)."""
    norm = {"hu_window": [float(v) for v in window], "mode": mode, "cube_size": int(cube_size)}
    if mode == "zscore":
        if train_normals is None or len(train_normals) == 0:
            raise ValueError("zscore normalisation needs the training normals")
        axes = (0, *range(2, train_normals.ndim))
        x = np.asarray(train_normals, np.float64)
        norm["mean"] = x.mean(axis=axes).tolist()
        norm["std"] = np.maximum(x.std(axis=axes), 1e-8).tolist()  # a constant channel must not divide by zero
    return norm


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


def load_cubes(run_dir: Path, norm: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(sample_ids, cubes)`` of a run, normalised to model range with ``norm``, shape (N, C, *spatial)."""
    ids, raw = artifacts.read_raw_cubes(run_dir)
    return ids, normalise(raw, norm)
