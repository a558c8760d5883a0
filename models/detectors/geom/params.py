"""Hyper-parameters of the ``geom`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from models.params import Family


@dataclass
class GeomParams:
    """Transformation-prediction hyper-parameters (config section ``model``)."""

    name: str = "geom3d"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    num_res_units: int = 2
    norm: Literal["batch", "instance"] = "batch"
    dropout: float = 0.0
    transforms_per_image: int = 0  # 0 = all T transforms of every training image per step
    knn_k: int = 5
    feature_views: Literal["identity", "all"] = "identity"  # density features: flattened trunk of x, or trunk GAP of all T views concatenated

    @classmethod
    def tiny(cls) -> "GeomParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls(channels=[4, 8], strides=[2, 2], num_res_units=1)

    def check(self, cfg) -> list[str]:
        errs = []
        if len(self.channels) != len(self.strides):
            errs.append(f"model.strides: {len(self.strides)} values but model.channels has {len(self.channels)}")
        if self.transforms_per_image < 0:
            errs.append("model.transforms_per_image: must be ≥ 0")
        if cfg.train.flips:
            errs.append("train.flips: must be false for geom (random flips make the transformation classes ambiguous)")
        return errs


FAMILY = Family("geom", GeomParams, ("geom", "geom_err", "feat_knn", "feat_maha"))
