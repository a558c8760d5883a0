"""Hyper-parameters of the ``synth`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from models.detectors.synth.families import FILLS, SHAPES
from models.params import Family, check_strides
from pipeline.core.validation import added


@dataclass
class SynthParams:
    """Synthetic-anomaly detector hyper-parameters (config section ``model``)."""

    name: str = "synth3d"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # MONAI UNet levels (the last is the bottom layer)
    strides: list[int] = field(default_factory=lambda: [2, 2, 1])  # len(channels) − 1 values; 28 → 14 → 7 → 7
    num_res_units: int = 2
    norm: Literal["instance", "batch"] = "instance"
    loss: Literal["bce", "mse"] = "bce"
    radius: list[float] = field(default_factory=lambda: [0.08, 0.35])
    # how each semi-axis is drawn from ``radius``: linear (uniform) or log (log-uniform: small and large anomalies equally often)
    radius_scale: Literal["linear", "log"] = added("linear", "2026-12-07")
    # each mask is centred on a voxel whose model-range intensity is below this (CT window [-1000, 400]: 0.43 = -400 HU, the lung's
    # air-like tissue, where the map is read); unset: anywhere within centre_margin
    centre_below: Optional[float] = added(None, "2026-12-07")
    blob: float = 0.3
    edge: list[float] = field(default_factory=lambda: [0.0, 0.5])
    alpha: list[float] = field(default_factory=lambda: [0.0, 1.0])
    clean_fraction: float = 0.25
    centre_margin: float = 0.15
    top_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])  # synth_top1, synth_top10
    knn_k: int = 5
    val_seed: int = 12345  # the fixed synthetic anomalies of the validation loss
    # fraction of each training batch left out of the step, by the highest loss on unaltered voxels (robustness to contaminated training data)
    trim: float = added(0.0, "2026-11-30")
    # synthetic anomaly families (models.detectors.synth.model.SHAPES / FILLS), one of each drawn per altered image
    shapes: list[str] = added(["ellipsoid"], "2026-12-04")
    fills: list[str] = added(["patch"], "2026-12-04")
    # mask: the target is α·m; visibility: m times how visible the change is, clip(mean |x' − x| over the mask / visibility_tau, 0, 1)
    # (NSA's rule: an alteration that changes nothing visible is not labelled as an anomaly)
    target: Literal["mask", "visibility"] = added("mask", "2026-12-07")
    visibility_tau: float = added(0.2, "2026-12-07")  # model-range units ([0, 1] window: 0.2 = 280 HU)
    # after the blend, each image is smoothed (σ ~ U(0, degrade_blur) voxels) and gets Gaussian noise (SD ~ U(0, degrade_noise)),
    # each with probability ½: a scanner's noise and sharpness are not an anomaly (0: off)
    degrade_blur: float = added(0.0, "2026-12-07")
    degrade_noise: float = added(0.0, "2026-12-07")

    @classmethod
    def tiny(cls) -> "SynthParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls(channels=[4, 8, 16], strides=[2, 2], num_res_units=1)

    def check(self, cfg) -> list[str]:
        errs = []
        if len(self.strides) != len(self.channels) - 1:
            errs.append(f"model.strides: needs len(model.channels) − 1 = {len(self.channels) - 1} values (MONAI UNet)")
        else:
            errs += check_strides(self.strides, cfg.train.patch_size)
        if not (len(self.radius) == 2 and 0 < self.radius[0] <= self.radius[1]):
            errs.append("model.radius: [min, max] with 0 < min ≤ max (fractions of the patch)")
        if not (len(self.edge) == 2 and 0 <= self.edge[0] <= self.edge[1] <= 1):
            errs.append("model.edge: [min, max] within [0, 1]")
        if not (len(self.alpha) == 2 and 0 <= self.alpha[0] <= self.alpha[1] <= 1):
            errs.append("model.alpha: [min, max] within [0, 1]")
        if not 0 <= self.blob < 1:
            errs.append("model.blob: must be in [0, 1)")
        if not 0 <= self.clean_fraction < 1:
            errs.append("model.clean_fraction: must be in [0, 1)")
        if not 0 <= self.centre_margin < 0.5:
            errs.append("model.centre_margin: must be in [0, 0.5)")
        if len(self.top_fractions) != 2 or not all(0 < f <= 1 for f in self.top_fractions):
            errs.append("model.top_fractions: two fractions in (0, 1]")
        for key, given, known in (("shapes", self.shapes, SHAPES), ("fills", self.fills, FILLS)):
            bad = [v for v in given if v not in known]
            if not given or bad:
                errs.append(f"model.{key}: {'unknown ' + ', '.join(map(repr, bad)) if bad else 'empty'}; choose from {', '.join(known)}")
        if self.visibility_tau <= 0:
            errs.append("model.visibility_tau: must be > 0 (model-range units)")
        if self.degrade_blur < 0 or self.degrade_noise < 0:
            errs.append("model.degrade_blur, model.degrade_noise: must be ≥ 0 (0 turns each off)")
        if not 0 <= self.trim < 0.5:
            errs.append("model.trim: fraction of each batch left out, in [0, 0.5)")
        return errs


FAMILY = Family("synth", SynthParams, ("synth_mean", "synth_top1", "synth_top10", "synth_max", "feat_knn", "feat_maha"))
