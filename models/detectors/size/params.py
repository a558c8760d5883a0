"""Hyper-parameters of the ``size`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from models.params import Family


@dataclass
class SizeParams:
    """Size baseline hyper-parameters (config section ``model``)."""

    name: str = "size3d"
    threshold: float = 0.45  # model range; 0.45 ≈ −370 HU in [−1000, 400] HU (lung/soft-tissue midpoint)
    centre_radius: int = 3  # the ball's centre lies within this many voxels (Chebyshev) of the patch centre

    @classmethod
    def tiny(cls) -> "SizeParams":
        """The smallest useful instance, for the contract tests (8-voxel patches, a few seconds for every test)."""
        return cls(centre_radius=2)

    def check(self, cfg) -> list[str]:
        errs = []
        if self.centre_radius < 0:
            errs.append("model.centre_radius: must be ≥ 0")
        if 2 * self.centre_radius + 1 > cfg.train.patch_size:
            errs.append("model.centre_radius: the central region is larger than train.patch_size")
        return errs


FAMILY = Family("size", SizeParams, ("size",))
