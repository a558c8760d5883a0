"""Intensity-statistic baseline, 2D and 3D: closed form (:mod:`models.nets.closed_form`).

- ``intensity2d``/``intensity3d``: a scalar statistic s(x) of all voxels (all channels) of the
  patch: ``mean``, ``std``, ``max``, ``high_fraction`` (fraction of voxels > ``threshold``) or
  ``complexity`` / ``jpeg`` (the PNG / JPEG size in bits of the patch mapped from
  ``value_range`` to 8 bits, :mod:`models.nets.complexity`).
  ``intensity_raw`` = s(x); ``intensity`` = its z-score against the normal training set,
  z = (s(x) − mean_train) / std_train, reported as |z| (``distance: two_sided``), z (``upper``)
  or −z (``lower``). Residual map: |x − mean training patch|.

Orientation of ``intensity_raw``: it is the statistic itself, so it is "higher = more anomalous"
only where anomalies are brighter/denser than normal tissue, e.g. solid nodules on lung
background in window-normalised CT (lung parenchyma ≈ 0, soft tissue ≈ 0.6 in [−1000, 400] HU):
there a raw mean intensity (or ``high_fraction``) ranks nodules above lung. The two-sided z-score
``intensity`` makes no assumption about the direction.
"""

from __future__ import annotations

import math

import torch

from models.detector import ScoreOutput
from models.detectors.intensity.params import STATISTICS, IntensityParams
from models.nets.closed_form import ClosedFormDetector
from models.nets.complexity import jpeg_bits, png_bits
from models.registry import DETECTORS, register_2d_3d


@register_2d_3d("intensity")
class IntensityDetector(ClosedFormDetector):
    """Intensity statistic z-scored against the normal training set

    Buffers: ``stat_mean`` and ``stat_std`` (scalars; sample standard deviation over the training
    patches, floored at ``min_std``) and ``mean_image`` (C, *spatial), the voxel-wise mean
    training patch used for the residual map.
    """


    def __init__(self, params: IntensityParams, in_channels: int, patch_size: int) -> None:
        super().__init__(params, in_channels, patch_size)
        if params.statistic not in STATISTICS:
            raise ValueError(f"model.statistic: {params.statistic!r} is not one of {', '.join(STATISTICS)}")
        self.register_buffer("stat_mean", torch.zeros(()))
        self.register_buffer("stat_std", torch.ones(()))
        self.register_buffer("mean_image", torch.zeros(in_channels, *([patch_size] * self.spatial_dims)))

    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        """The raw statistic per sample, over all channels and voxels: (B,)."""
        flat = x.reshape(len(x), -1)
        stat = self.params.statistic
        if stat == "mean":
            return flat.mean(1)
        if stat == "std":
            return flat.std(1, correction=0)
        if stat == "max":
            return flat.amax(1)
        if stat == "complexity":
            return png_bits(x, *self.params.value_range)
        if stat == "jpeg":
            return jpeg_bits(x, *self.params.value_range)
        return (flat > self.params.threshold).to(flat.dtype).mean(1)

    def zscore(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(distance score, raw statistic)`` per sample."""
        raw = self.statistic(x)
        z = (raw - self.stat_mean) / self.stat_std
        dist = {"two_sided": z.abs(), "upper": z, "lower": -z}[self.params.distance]
        return dist, raw

    def fit_arrays(self, train_x: torch.Tensor) -> dict[str, float]:
        x = self._check_input(train_x).detach().to(self.mean_image.device, self.mean_image.dtype)
        if len(x) == 0:
            raise ValueError(f"{self.registry_name}: cannot fit on 0 training patches")
        with torch.no_grad():
            s = self.statistic(x).double()
            std = float(s.std(correction=1)) if len(s) > 1 else 0.0
            self.stat_mean.fill_(float(s.mean()))
            self.stat_std.fill_(max(std, self.params.min_std) if math.isfinite(std) else self.params.min_std)
            self.mean_image.copy_(x.double().mean(0).to(self.mean_image.dtype))
            loss = float(self.validation_loss(x).mean())
        return {"loss": loss, "stat_mean": float(self.stat_mean), "stat_std": float(self.stat_std)}

    def validation_loss(self, x):
        """Squared z-score z² of the statistic (≈ 1 on average for normal data from the training
        distribution; independent of ``distance``)."""
        x = self._check_input(x).to(self.mean_image.dtype)
        return ((self.statistic(x) - self.stat_mean) / self.stat_std).pow(2)

    @torch.inference_mode()
    def score(self, x, mc_samples, generator):
        x = self._check_input(x).to(self.mean_image.dtype)
        dist, raw = self.zscore(x)
        return ScoreOutput.of({"intensity": dist, "intensity_raw": raw}, x, self.mean_image.expand_as(x))


Intensity2D, Intensity3D = DETECTORS["intensity2d"], DETECTORS["intensity3d"]
