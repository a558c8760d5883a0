"""Candidates from a voxel map (evaluation.map_candidates): local maxima, sizes, values at points."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ball, chest_phantom

from evaluation.map_candidates import component_diameter, peaks, value_at, voxel_candidates
from preprocessing.lung import lung_region


def test_peaks_are_separated_local_maxima_highest_first_inside_the_mask():
    smap = np.zeros((30, 30, 30), np.float32)
    for (z, y, x), v in (((5, 5, 5), 3.0), ((5, 5, 9), 2.5), ((20, 20, 20), 2.0), ((25, 5, 20), 4.0)):
        smap[z, y, x] = v
    mask = np.ones_like(smap, bool)
    mask[25, 5, 20] = False  # the highest peak lies outside the mask: no candidate
    found = peaks(smap, mask, (1.0, 1.0, 1.0), nms_mm=6.0, max_n=10)
    assert [tuple(p) for p in found[:2]] == [(5, 5, 5), (20, 20, 20)]  # (5, 5, 9) is 4 mm from the first: suppressed
    assert all(mask[tuple(p)] for p in found) and all(smap[tuple(p)] <= 2.0 for p in found[1:])
    assert len(peaks(smap, mask, (1.0, 1.0, 1.0), nms_mm=6.0, max_n=1)) == 1


@pytest.mark.parametrize("radius", [3.0, 6.0])
def test_the_size_is_the_blob_diameter(radius):
    shape = (40, 40, 40)
    blob = ball(shape, (20, 20, 20), radius).astype(np.float32)
    assert component_diameter(blob, (20, 20, 20), (1.0, 1.0, 1.0), level=0.5) == pytest.approx(2 * radius, abs=1.0)
    # on a 2 mm grid the same physical blob keeps its size
    coarse = ball((20, 20, 20), (10, 10, 10), radius / 2).astype(np.float32)
    assert component_diameter(coarse, (10, 10, 10), (2.0, 2.0, 2.0), level=0.5) == pytest.approx(2 * radius, abs=2.0)


def test_voxel_candidates_find_blobs_in_the_region_with_sizes():
    vol, vessel, nodule = chest_phantom()
    region = lung_region(vol, (1.0, 1.0, 1.0), closing_radius_mm=10.0)
    amap = np.zeros(vol.shape, np.float32)
    amap[ball(vol.shape, (20, 45, 84), 4)] = 2.0  # a lesion-like blob in the left lung
    amap[ball(vol.shape, (24, 40, 55), 4)] = 5.0  # a brighter one in the mediastinum: outside the region
    found, values, sizes, smooth = voxel_candidates(amap, region, (1.0, 1.0, 1.0), sigma_mm=1.0, nms_mm=10.0, max_n=5, size_level=0.5)
    assert region[tuple(found.T)].all() and (values > 0).all()
    assert np.linalg.norm(found[0] - (20, 45, 84)) <= 1.0 and sizes[0] == pytest.approx(8.0, abs=2.0)
    value, pct, inside = value_at(smooth, region, np.array([20, 45, 84]))
    assert inside and value == pytest.approx(values[0], rel=1e-5) and pct > 99
    assert not value_at(smooth, region, np.array([24, 40, 55]))[2]
