"""The lung region of a chest CT (preprocessing.lung): what it holds, the closing, the central airways, gas below the diaphragm."""

from __future__ import annotations

import numpy as np
from conftest import chest_phantom

from preprocessing.cubes import lung_mask
from preprocessing.lung import central_airways, closing_mm, lung_region


def test_the_lung_region_holds_vessels_and_juxtapleural_nodules_but_not_the_chest_wall():
    vol, vessel, nodule = chest_phantom()
    region = lung_region(vol, (1.0, 1.0, 1.0), hu_max=-400.0, closing_radius_mm=10.0)
    assert region[vessel] and region[nodule]  # the vessel (filled per slice) and the nodule centre (the closing fills the dent)
    assert not region[24, 40, 8] and not region[24, 12, 26]  # chest wall 4 mm lateral, 6 mm anterior of the lung
    assert not region[24, 40, 55] and not region[2, 40, 26]  # the mediastinum between the lungs, and above the lung
    assert not lung_region(vol, (1.0, 1.0, 1.0), closing_radius_mm=0.0)[nodule]  # without closing, the dent stays out


def test_closing_contains_the_mask_and_fills_a_gap_smaller_than_theball():
    mask = np.zeros((20, 40, 40), bool)
    mask[5:15, 5:35, 5:18] = mask[5:15, 5:35, 21:35] = True  # a 3 mm slit
    closed = closing_mm(mask, (1.0, 1.0, 1.0), 4.0)
    assert closed[mask].all() and closed[10, 20, 19]
    assert not closed[10, 2, 20] and not closed[10, 20, 38]  # nothing grows beyond the outer boundary


def test_the_trachea_and_main_bronchi_are_traced_and_left_out_of_the_region():
    """A trachea (an 8 mm air tube in the mediastinum, entering from the head end) that splits into two bronchi
    into the lungs: the region keeps the lungs and leaves out the tube and its wall; the head end is found
    from the orientation (the same phantom upside down, ``head_at_end=False``, gives the same airway)."""
    vol, vessel, nodule = chest_phantom()
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
    vol, vessel, nodule = chest_phantom()
    lung = lung_mask(vol, -400.0)
    assert not central_airways(lung, (1.0, 1.0, 1.0)).any()  # the head-end slices hold two lateral lungs, no midline tube


def test_gas_below_the_diaphragm_is_not_lung():
    """A stomach bubble (an enclosed air pocket below the lungs) gives no region; both lungs stay."""
    vol, vessel, nodule = chest_phantom()
    vol = np.concatenate([np.full((30, 80, 110), 40.0, np.float32), vol])  # the abdomen below (z index 0 = feet)
    vol[:, :8], vol[:, 72:], vol[:, :, :4], vol[:, :, 106:] = -1000.0, -1000.0, -1000.0, -1000.0  # outside air around the body
    vol[8:18, 32:47, 72:87] = -1000.0  # the gastric bubble, separate from the lungs (5 % of one lung)
    region = lung_region(vol, (1.0, 1.0, 1.0), closing_radius_mm=10.0)
    assert not region[13, 40, 80]
    assert region[30 + 20, 40, 26] and region[30 + 20, 40, 84] and region[tuple(np.add(vessel, (30, 0, 0)))]
