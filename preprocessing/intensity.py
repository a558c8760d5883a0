"""HU windowing and normalisation: the one definition shared by training, scoring and new data."""

from __future__ import annotations

import numpy as np


def normalise_hu(hu: np.ndarray, window: tuple[float, float], mode: str = "window") -> np.ndarray:
    """Map HU to model range. ``window``: clip to [lo, hi] and scale to [0, 1]; ``none``: HU as float."""
    hu = np.asarray(hu, dtype=np.float32)
    if mode == "none":
        return hu
    if mode != "window":
        raise ValueError(f"unknown normalisation mode {mode!r}")
    lo, hi = window
    return (np.clip(hu, lo, hi) - lo) / (hi - lo)
