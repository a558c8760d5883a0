"""Cube cutting, lung mask and background sampling on synthetic zyx volumes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.core.errors import ExtractionError
from preprocessing.cubes import _box_sums, background_starts, cube_start, cut_cube, lung_mask

SHAPE_ZYX = (12, 14, 16)  # z, y, x  -> ijk extents (16, 14, 12)
PAD = -1234.0


@pytest.fixture
def vol() -> np.ndarray:
    return np.arange(np.prod(SHAPE_ZYX), dtype=np.float32).reshape(SHAPE_ZYX)


def expected_cube(vol: np.ndarray, start_ijk, size: int, pad: float) -> np.ndarray:
    """Reference: voxel-by-voxel lookup with ijk -> array[k, j, i]."""
    out = np.full((size,) * 3, pad, dtype=vol.dtype)
    i0, j0, k0 = start_ijk
    for a, b, c in itertools.product(range(size), repeat=3):  # a=z, b=y, c=x offsets
        k, j, i = k0 + a, j0 + b, i0 + c
        if 0 <= k < vol.shape[0] and 0 <= j < vol.shape[1] and 0 <= i < vol.shape[2]:
            out[a, b, c] = vol[k, j, i]
    return out


def test_cut_inside_is_unpadded_slice(vol):
    start = np.array([5, 3, 2])  # i, j, k
    cube, padded = cut_cube(vol, start, 4, PAD)
    assert padded is False
    assert cube.shape == (4, 4, 4)
    np.testing.assert_array_equal(cube, vol[2:6, 3:7, 5:9])
    np.testing.assert_array_equal(cube, expected_cube(vol, start, 4, PAD))
    cube[:] = 0  # a copy, not a view
    assert vol[2, 3, 5] != 0


def test_cube_touching_far_faces_exactly_is_not_padded(vol):
    size = 5
    start = np.array([SHAPE_ZYX[2] - size, SHAPE_ZYX[1] - size, SHAPE_ZYX[0] - size])
    cube, padded = cut_cube(vol, start, size, PAD)
    assert padded is False
    np.testing.assert_array_equal(cube, vol[-size:, -size:, -size:])
    cube, padded = cut_cube(vol, np.zeros(3, int), size, PAD)
    assert padded is False
    np.testing.assert_array_equal(cube, vol[:size, :size, :size])


FACE_STARTS = []
for axis in range(3):
    for side in ("low", "high"):
        s = [4, 4, 4]
        extent = SHAPE_ZYX[::-1][axis]
        s[axis] = -2 if side == "low" else extent - 3
        FACE_STARTS.append(tuple(s))
CORNER_STARTS = [tuple(-2 if lo else SHAPE_ZYX[::-1][ax] - 3 for ax, lo in enumerate(c))
                 for c in itertools.product((True, False), repeat=3)]


@pytest.mark.parametrize("start", FACE_STARTS + CORNER_STARTS)
def test_cut_at_faces_and_corners_is_padded(vol, start):
    size = 5
    cube, padded = cut_cube(vol, np.array(start), size, PAD)
    assert padded is True
    assert cube.shape == (size,) * 3 and cube.dtype == vol.dtype
    ref = expected_cube(vol, start, size, PAD)
    np.testing.assert_array_equal(cube, ref)
    assert (cube == PAD).any()
    assert (cube != PAD).any()


def test_cut_left_face_pad_location(vol):
    # start i = -2: the first two x columns of the cube are padding, the rest is volume
    cube, padded = cut_cube(vol, np.array([-2, 1, 1]), 4, PAD)
    assert padded
    assert (cube[:, :, :2] == PAD).all()
    np.testing.assert_array_equal(cube[:, :, 2:], vol[1:5, 1:5, 0:2])


@pytest.mark.parametrize("start", [(-5, 0, 0), (16, 0, 0), (0, 14, 0), (0, 0, 12), (0, -4, 0), (100, 100, 100), (-10, -10, -10)])
def test_cut_entirely_outside_raises(vol, start):
    with pytest.raises(ExtractionError, match="does not overlap"):
        cut_cube(vol, np.array(start), 4, PAD)


def test_cube_start_centre_at_half_size():
    centre = np.array([10, 20, 30])
    for size in (4, 5, 32):
        start = cube_start(centre, size)
        np.testing.assert_array_equal(start + size // 2, centre)
    np.testing.assert_array_equal(cube_start([10, 20, 30], 32), [-6, 4, 14])


def test_cube_start_centre_voxel_value(vol):
    centre = np.array([7, 6, 5])  # ijk
    size = 5
    cube, _ = cut_cube(vol, cube_start(centre, size), size, PAD)
    assert cube[size // 2, size // 2, size // 2] == vol[5, 6, 7]


# ---------------------------------------------------------------- lung mask


def body_phantom():
    """-1000 HU air, a 0 HU body box spanning all z, two enclosed -800 HU 'lungs'."""
    v = np.full((20, 30, 30), -1000.0, dtype=np.float32)
    v[:, 4:26, 3:27] = 0.0
    v[3:17, 8:22, 6:13] = -800.0  # left lung
    v[3:17, 8:22, 17:24] = -800.0  # right lung
    v[5, 15, 20] = 50.0  # a vessel voxel inside the right lung
    return v


def test_lung_mask_keeps_enclosed_air_only():
    v = body_phantom()
    m = lung_mask(v, hu_max=-400.0)
    assert m.shape == v.shape and m.dtype == bool
    expected = v < -400
    expected[:, :4, :] = False
    expected[:, 26:, :] = False
    expected[:, :, :3] = False
    expected[:, :, 27:] = False
    np.testing.assert_array_equal(m, expected)
    assert m[3:17, 8:22, 6:13].all() and m[10, 10, 20]
    assert not m[:, 0, :].any() and not m[:, :, 0].any()  # outside air removed
    assert not m[10, 10, 15]  # body between the lungs
    assert not m[5, 15, 20]  # vessel


def test_lung_mask_drops_tiny_components_and_handles_no_air():
    v = body_phantom()
    v[10, 24, 15] = -900.0  # one isolated enclosed air voxel: < 1% of the largest lung
    m = lung_mask(v)
    assert not m[10, 24, 15]
    assert m[10, 10, 10]
    assert not lung_mask(np.zeros((5, 6, 7), np.float32)).any()
    assert not lung_mask(np.full((5, 6, 7), -1000.0, np.float32)).any()  # only outside air


def test_box_sums_match_brute_force():
    rng = np.random.default_rng(1)
    m = rng.random((9, 8, 7)) > 0.5
    starts = np.array([[0, 0, 0], [1, 2, 3], [5, 4, 3], [6, 5, 4]])
    got = _box_sums(m, starts, 3)
    ref = [m[z:z + 3, y:y + 3, x:x + 3].sum() for z, y, x in starts]
    np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------- background sampling


def big_phantom():
    v = np.full((40, 60, 60), -1000.0, dtype=np.float32)
    v[:, 5:55, 5:55] = 20.0
    v[2:38, 10:50, 8:28] = -850.0
    v[2:38, 10:50, 32:52] = -850.0
    return v


def check_starts(v, starts, size, avoid, min_dist, frac):
    mask = lung_mask(v)
    for i, j, k in starts:
        assert 0 <= i and 0 <= j and 0 <= k
        assert k + size <= v.shape[0] and j + size <= v.shape[1] and i + size <= v.shape[2]
        assert mask[k:k + size, j:j + size, i:i + size].mean() >= frac
        if len(avoid):
            centre = np.array([i, j, k]) + size // 2
            assert np.abs(np.asarray(avoid) - centre).max(1).min() >= min_dist


def test_background_starts_respect_lung_fraction_and_distance():
    v = big_phantom()
    size, stride = 8, 4
    rng = np.random.default_rng(0)
    free = background_starts(v, size, stride, np.zeros((0, 3), int), 0, 0.5, -400.0, 10_000, rng)
    assert free.ndim == 2 and free.shape[1] == 3 and len(free) > 20
    assert np.issubdtype(free.dtype, np.integer)
    check_starts(v, free, size, [], 0, 0.5)
    # a stricter fraction gives a subset
    strict = background_starts(v, size, stride, np.zeros((0, 3), int), 0, 1.0, -400.0, 10_000, rng)
    assert 0 < len(strict) < len(free)
    assert {tuple(s) for s in strict} <= {tuple(s) for s in free}
    check_starts(v, strict, size, [], 0, 1.0)

    avoid = np.array([[18, 30, 20], [42, 20, 10]])  # ijk nodule centres inside the lungs
    min_dist = 10
    kept = background_starts(v, size, stride, avoid, min_dist, 0.5, -400.0, 10_000, rng)
    check_starts(v, kept, size, avoid, min_dist, 0.5)
    assert 0 < len(kept) < len(free)
    # exactly the free candidates at Chebyshev distance >= min_dist are kept
    centres = free + size // 2
    dist = np.abs(centres[:, None, :] - avoid[None]).max(-1).min(1)
    np.testing.assert_array_equal(np.sort(kept, axis=0), np.sort(free[dist >= min_dist], axis=0))
    assert (dist < min_dist).any()  # the avoidance actually removed something


def test_background_starts_cap_and_small_volume():
    v = big_phantom()
    rng = np.random.default_rng(5)
    capped = background_starts(v, 8, 4, np.zeros((0, 3), int), 0, 0.5, -400.0, 7, rng)
    assert len(capped) == 7
    assert len({tuple(s) for s in capped}) == 7
    check_starts(v, capped, 8, [], 0, 0.5)
    tiny = background_starts(v[:4], 8, 4, np.zeros((0, 3), int), 0, 0.5, -400.0, 10, rng)
    assert tiny.shape == (0, 3)


def test_background_starts_in_a_region_are_exactly_the_grid_points_centred_in_it():
    """``centres: lung_region``: every grid cube whose centre voxel is in the region (border cubes too), none other;
    the nodule distance still applies."""
    v = big_phantom()
    size, stride = 8, 4
    region = np.zeros(v.shape, bool)
    region[10:30, 5:25, 3:40] = True  # zyx
    rng = np.random.default_rng(0)
    starts = background_starts(v, size, stride, np.zeros((0, 3), int), 0, 0.5, -400.0, 10_000, rng, region)
    centres_zyx = starts[:, ::-1] + size // 2
    assert len(starts) and region[tuple(centres_zyx.T)].all()
    axes = [np.arange(0, n - size + 1, stride) + size // 2 for n in v.shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    assert len(starts) == int(region[tuple(grid.T)].sum())
    avoid = np.array([[20, 15, 20]])  # ijk
    kept = background_starts(v, size, stride, avoid, 10, 0.5, -400.0, 10_000, rng, region)
    assert 0 < len(kept) < len(starts) and (np.abs(kept + size // 2 - avoid).max(1) >= 10).all()
