"""Training augmentation with MONAI dictionary transforms.

Training draws a random ``patch``-sized sub-patch of each cube (32³ → 28³) and flips it along
every spatial axis with probability ½. Scoring and validation use the centre patch
(:func:`preprocessing.cubes.centre_patch`), so a cube's score is deterministic.
"""

from __future__ import annotations

from monai.transforms import Compose, EnsureTyped, RandFlipd, RandSpatialCropd

KEY = "image"


def train_transforms(patch: int, spatial_dims: int, flips: bool = True) -> Compose:
    """Random ``patch`` crop plus random flips along each axis (training only)."""
    steps = [RandSpatialCropd(KEY, roi_size=[patch] * spatial_dims, random_size=False)]
    if flips:
        steps += [RandFlipd(KEY, prob=0.5, spatial_axis=a) for a in range(spatial_dims)]
    steps.append(EnsureTyped(KEY, track_meta=False))
    return Compose(steps)
