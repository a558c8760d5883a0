"""Hyper-parameters of the ``intensity`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.params import Family, check_value_range
from pipeline.core.validation import added

STATISTICS = ("mean", "std", "max", "high_fraction", "complexity", "jpeg")  # the values of model.statistic


@dataclass
class IntensityParams:
    """Intensity-statistic baseline hyper-parameters (config section ``model``)."""

    name: str = "intensity3d"
    # complexity: PNG bits, jpeg: JPEG (quality 75) bits of the 8-bit patch (models/nets/complexity.py)
    statistic: Literal["mean", "std", "max", "high_fraction", "complexity", "jpeg"] = "mean"
    threshold: float = 0.5  # high_fraction: voxels above this value (model range; 0.5 ≈ −300 HU in [−1000, 400])
    distance: Literal["two_sided", "upper", "lower"] = "two_sided"  # |z|, z (brighter = anomalous) or −z
    min_std: float = 1e-6  # floor of the training standard deviation (constant training statistic)
    # complexity / jpeg: the value range mapped to 8 bits (model units; z-scored data: e.g. [-3, 3])
    value_range: list[float] = added([0.0, 1.0], "2026-12-04")

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
        if self.statistic in ("complexity", "jpeg"):
            errs += check_value_range(self.value_range, f"the {self.statistic} statistic", cfg)
        return errs


FAMILY = Family("intensity", IntensityParams, ("intensity", "intensity_raw"))
