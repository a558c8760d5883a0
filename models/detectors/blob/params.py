"""Hyper-parameters of the ``blob`` family (config section ``model``) and its declaration; torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.params import Family


@dataclass
class BlobParams:
    """Blob baseline hyper-parameters (config section ``model``)."""

    name: str = "blob3d"
    # Gaussian scales in voxels (1 mm on the LIDC grids), ratio ≈ 1.58: a bright ball of radius r answers most at
    # σ = r/√dims, so these cover diameters of ≈ 3.5-22 mm in 3D. Fixed from that textbook rule, not tuned.
    sigmas: list[float] = field(default_factory=lambda: [1.0, 1.6, 2.5, 4.0, 6.3])
    centre_radius: int = 3  # the patch score is the map's maximum within this many voxels (Chebyshev) of the centre

    @classmethod
    def tiny(cls) -> "BlobParams":
        """The smallest useful instance, for the contract tests."""
        return cls(sigmas=[1.0], centre_radius=2)

    def check(self, cfg) -> list[str]:
        errs = []
        if not self.sigmas or any(not isinstance(s, (int, float)) or s <= 0 for s in self.sigmas):
            errs.append("model.sigmas: a non-empty list of positive Gaussian scales (voxels)")
        if self.centre_radius < 0:
            errs.append("model.centre_radius: must be ≥ 0")
        if 2 * self.centre_radius + 1 > cfg.train.patch_size:
            errs.append("model.centre_radius: the central region is larger than train.patch_size")
        return errs


FAMILY = Family("blob", BlobParams, ("blob",))
