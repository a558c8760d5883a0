"""Augmentation and cropping with MONAI dictionary transforms.

Training draws a random ``patch``-sized sub-patch of each cube (32³ → 28³) and flips it along
every spatial axis with probability ½. Scoring and validation use the centre patch, so a cube's
score is deterministic.
"""

from __future__ import annotations

from monai.transforms import CenterSpatialCropd, Compose, EnsureTyped, RandFlipd, RandSpatialCropd

KEY = "image"


def train_transforms(patch: int, spatial_dims: int, flips: bool = True) -> Compose:
    steps = [RandSpatialCropd(KEY, roi_size=[patch] * spatial_dims, random_size=False)]
    if flips:
        steps += [RandFlipd(KEY, prob=0.5, spatial_axis=a) for a in range(spatial_dims)]
    steps.append(EnsureTyped(KEY, track_meta=False))
    return Compose(steps)


def centre_transforms(patch: int, spatial_dims: int) -> Compose:
    return Compose([CenterSpatialCropd(KEY, roi_size=[patch] * spatial_dims), EnsureTyped(KEY, track_meta=False)])


def centre_offset(size: int, patch: int) -> int:
    """Index of the centre patch's first voxel inside a ``size`` cube (MONAI's centre-crop rule)."""
    return (size - patch) // 2
