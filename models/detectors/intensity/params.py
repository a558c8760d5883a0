"""Hyper-parameters of the ``intensity`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.params import Family

STATISTICS = ("mean", "std", "max", "high_fraction", "complexity")  # the values of model.statistic


@dataclass
class IntensityParams:
    """Intensity-statistic baseline hyper-parameters (config section ``model``)."""

    name: str = "intensity3d"
    statistic: Literal["mean", "std", "max", "high_fraction", "complexity"] = "mean"  # complexity: PNG bits (models/nets/complexity.py)
    threshold: float = 0.5  # high_fraction: voxels above this value (model range; 0.5 ≈ −300 HU in [−1000, 400])
    distance: Literal["two_sided", "upper", "lower"] = "two_sided"  # |z|, z (brighter = anomalous) or −z
    min_std: float = 1e-6  # floor of the training standard deviation (constant training statistic)

    @classmethod
    def tiny(cls) -> "IntensityParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls()

    def check(self, cfg) -> list[str]:
        errs = []
        if not self.min_std > 0:
            errs.append("model.min_std: must be > 0")
        if self.statistic == "high_fraction" and cfg.extract.normalise == "window" and not 0 <= self.threshold <= 1:
            errs.append(f"model.threshold: {self.threshold} is outside the model range [0, 1] of window-normalised data")
        return errs


FAMILY = Family("intensity", IntensityParams, ("intensity", "intensity_raw"))
