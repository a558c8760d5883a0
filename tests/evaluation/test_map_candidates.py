"""Candidates from a voxel map (evaluation.map_candidates): the lung region, local maxima, sizes, values at points."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.map_candidates import central_airways, closing_mm, component_diameter, lung_region, peaks, value_at, voxel_candidates
from preprocessing.cubes import lung_mask


def _ball(shape, centre, radius):
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def _chest():
    """A 48×80×110 phantom at 1 mm: outside air, a tissue body, two air lungs (−850 HU) 30 mm apart; in the right
    lung a vessel (a tissue ball the air surrounds) and on its lateral wall (x = 12) a juxtapleural nodule, a 6 mm
    radius tissue ball centred 3 mm inside the lung: the air mask has a dent where it sits."""
    shape = (48, 80, 110)
    vol = np.full(shape, -1000.0, np.float32)
    vol[:, 8:72, 4:106] = 40.0  # body
    vol[6:42, 18:62, 12:40] = -850.0  # right lung
    vol[6:42, 18:62, 70:98] = -850.0  # left lung
    vessel = (24, 40, 28)
    vol[_ball(shape, vessel, 3)] = 40.0
    nodule = (24, 30, 15)
    vol[_ball(shape, nodule, 6)] = 40.0
    return vol, vessel, nodule


def test_the_lung_region_holds_vessels_and_juxtapleural_nodules_but_not_the_chest_wall():
    vol, vessel, nodule = _chest()
    region = lung_region(vol, (1.0, 1.0, 1.0), hu_max=-400.0, closing_radius_mm=10.0)
    assert region[vessel] and region[nodule]  # the vessel (filled per slice) and the nodule centre (the closing fills the dent)
    assert not region[24, 40, 8] and not region[24, 12, 26]  # chest wall 4 mm lateral, 6 mm anterior of the lung
    assert not region[24, 40, 55] and not region[2, 40, 26]  # the mediastinum between the lungs, and above the lung
    assert not lung_region(vol, (1.0, 1.0, 1.0), closing_radius_mm=0.0)[nodule]  # without closing, the dent stays out


def test_closing_contains_the_mask_and_fills_a_gap_smaller_than_the_ball():
    mask = np.zeros((20, 40, 40), bool)
    mask[5:15, 5:35, 5:18] = mask[5:15, 5:35, 21:35] = True  # a 3 mm slit
    closed = closing_mm(mask, (1.0, 1.0, 1.0), 4.0)
    assert closed[mask].all() and closed[10, 20, 19]
    assert not closed[10, 2, 20] and not closed[10, 20, 38]  # nothing grows beyond the outer boundary


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
    blob = _ball(shape, (20, 20, 20), radius).astype(np.float32)
    assert component_diameter(blob, (20, 20, 20), (1.0, 1.0, 1.0), level=0.5) == pytest.approx(2 * radius, abs=1.0)
    # on a 2 mm grid the same physical blob keeps its size
    coarse = _ball((20, 20, 20), (10, 10, 10), radius / 2).astype(np.float32)
    assert component_diameter(coarse, (10, 10, 10), (2.0, 2.0, 2.0), level=0.5) == pytest.approx(2 * radius, abs=2.0)


def test_voxel_candidates_find_blobs_in_the_region_with_sizes():
    vol, vessel, nodule = _chest()
    region = lung_region(vol, (1.0, 1.0, 1.0), closing_radius_mm=10.0)
    amap = np.zeros(vol.shape, np.float32)
    amap[_ball(vol.shape, (20, 45, 84), 4)] = 2.0  # a lesion-like blob in the left lung
    amap[_ball(vol.shape, (24, 40, 55), 4)] = 5.0  # a brighter one in the mediastinum: outside the region
    found, values, sizes, smooth = voxel_candidates(amap, region, (1.0, 1.0, 1.0), sigma_mm=1.0, nms_mm=10.0, max_n=5, size_level=0.5)
    assert region[tuple(found.T)].all() and (values > 0).all()
    assert np.linalg.norm(found[0] - (20, 45, 84)) <= 1.0 and sizes[0] == pytest.approx(8.0, abs=2.0)
    value, pct, inside = value_at(smooth, region, np.array([20, 45, 84]))
    assert inside and value == pytest.approx(values[0], rel=1e-5) and pct > 99
    assert not value_at(smooth, region, np.array([24, 40, 55]))[2]


def test_the_trachea_and_main_bronchi_are_traced_and_left_out_of_the_region():
    """A trachea (an 8 mm air tube in the mediastinum, entering from the head end) that splits into two bronchi
    into the lungs: the region keeps the lungs and leaves out the tube and its wall; the head end is found
    from the orientation (the same phantom upside down, ``head_at_end=False``, gives the same airway)."""
    vol, vessel, nodule = _chest()
    vol[24:48, 36:44, 51:59] = -1000.0  # trachea: z 24 (carina) up to the head end
    vol[24:27, 36:44, 44:66] = -1000.0  # the carina
    vol[18:24, 36:44, 44:48] = vol[18:24, 36:44, 62:66] = -1000.0  # the main bronchi going down
    vol[18:20, 36:44, 38:48] = vol[18:20, 36:44, 62:72] = -1000.0  # ... into the lungs
    lung = lung_mask(vol, -400.0)
    airway = central_airways(lung, (1.0, 1.0, 1.0))
    assert airway[40, 40, 55] and airway[25, 40, 55] and airway[22, 40, 46] and airway[22, 40, 64]  # trachea, carina, both bronchi
    assert airway[40, 40, 49] and not airway[40, 40, 47]  # its 3 mm wall, not further
    assert not airway[20, 40, 26] and not airway[24, 40, 84]  # the lungs themselves
    region = lung_region(vol, (1.0, 1.0, 1.0), closing_radius_mm=10.0)
    assert not region[40, 40, 55] and region[vessel] and region[nodule] and region[20, 40, 84]
    flipped = central_airways(lung[::-1], (1.0, 1.0, 1.0), head_at_end=False)
    assert np.array_equal(flipped[::-1], airway)
    assert not central_airways(lung[:17], (1.0, 1.0, 1.0)).any()  # a scan that stops below the bronchi: nothing


def test_a_scan_without_an_enclosed_trachea_loses_no_lung():
    vol, vessel, nodule = _chest()
    lung = lung_mask(vol, -400.0)
    assert not central_airways(lung, (1.0, 1.0, 1.0)).any()  # the head-end slices hold two lateral lungs, no midline tube


def test_gas_below_the_diaphragm_is_not_lung():
    """A stomach bubble (an enclosed air pocket below the lungs) gives no region; both lungs stay."""
    vol, vessel, nodule = _chest()
    vol = np.concatenate([np.full((30, 80, 110), 40.0, np.float32), vol])  # the abdomen below (z index 0 = feet)
    vol[:, :8], vol[:, 72:], vol[:, :, :4], vol[:, :, 106:] = -1000.0, -1000.0, -1000.0, -1000.0  # outside air around the body
    vol[8:18, 32:47, 72:87] = -1000.0  # the gastric bubble, separate from the lungs (5 % of one lung)
    region = lung_region(vol, (1.0, 1.0, 1.0), closing_radius_mm=10.0)
    assert not region[13, 40, 80]
    assert region[30 + 20, 40, 26] and region[30 + 20, 40, 84] and region[tuple(np.add(vessel, (30, 0, 0)))]
