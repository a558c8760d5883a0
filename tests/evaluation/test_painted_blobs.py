"""The label-free selection measure's parts (evaluation.painted_blobs): painting, placing, the validation region, the FROC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.painted_blobs import blob_froc, draw_blobs, paint_blobs, place_blobs, validation_region, voxel_mm


def test_a_painted_blob_peaks_at_its_centre_with_its_density_and_keeps_brighter_tissue():
    hu = np.full((40, 40, 40), -850.0, np.float32)
    hu[:, 20, :] = 40.0  # a bright plate (a vessel wall) through the blob
    out = paint_blobs(hu, np.array([[20, 18, 22]]), np.array([4.5]), np.array([-100.0]), (1.0, 1.0, 1.0))
    assert out[20, 18, 22] == pytest.approx(-100.0)
    assert np.unravel_index(np.argmax(np.where(hu < 0, out, -2000)), out.shape) == (20, 18, 22)
    assert (out[:, 20, :] == 40.0).all()  # max-blend: the plate is untouched
    assert out[20, 18, 22 + 3] == pytest.approx(-1000 + 900 * np.exp(-0.5 * (3 / 3.0) ** 2), abs=1e-3)  # s = r / 1.5 = 3 mm
    assert out[2, 2, 2] == -850.0 and hu[20, 18, 22] == -850.0  # far voxels and the input are unchanged


def test_anisotropic_spacing_is_in_mm():
    hu = np.full((20, 40, 40), -900.0, np.float32)
    out = paint_blobs(hu, np.array([[10, 20, 20]]), np.array([3.0]), np.array([0.0]), (2.0, 1.0, 1.0))
    assert out[11, 20, 20] == pytest.approx(out[10, 20, 22], abs=1e-3)  # one 2 mm slice = two 1 mm columns


def test_blobs_are_placed_in_the_parenchyma_of_the_region_and_apart():
    hu = np.full((60, 60, 60), -850.0, np.float32)
    hu[:, :, 30:] = 40.0
    region = np.zeros(hu.shape, bool)
    region[5:55, 5:55, 5:55] = True
    c = place_blobs(region, hu, 6, (1.0, 1.0, 1.0), np.random.default_rng(0), min_apart_mm=12.0)
    assert len(c) == 6 and region[tuple(c.T)].all() and (hu[tuple(c.T)] < -600).all()
    d = np.linalg.norm(c[:, None] - c[None], axis=2)
    assert d[~np.eye(6, dtype=bool)].min() >= 12.0
    scales, peaks = draw_blobs(500, (2.5, 8.0), (-500.0, 50.0), np.random.default_rng(1))
    assert 2.5 <= scales.min() and scales.max() <= 8.0 and -500 <= peaks.min() and peaks.max() <= 50
    assert np.median(scales) == pytest.approx(np.sqrt(2.5 * 8.0), rel=0.15)  # log-uniform


def test_the_validation_region_is_the_lung_near_the_validation_cubes():
    lung = np.zeros((40, 40, 40), bool)
    lung[:, :, :30] = True
    r = validation_region(np.array([[10, 10, 10], [30, 30, 30]]), np.array([4, 4, 4]), lung.shape, lung)
    assert r[10, 14, 6] and not r[10, 15, 10] and not r[30, 30, 31]  # the box, not beyond; outside the lung: out
    assert r.sum() == 9**3 + 9 * 9 * 4


def test_the_blob_froc_counts_other_candidates_as_false():
    blobs = [pd.DataFrame({"series_uid": "a", **voxel_mm(np.array([[10, 10, 10], [30, 30, 30]]), (1, 1, 1)), "radius_mm": 3.0})]
    cands = [pd.DataFrame({"series_uid": "a", **voxel_mm(np.array([[10, 11, 10], [0, 0, 0], [30, 30, 35]]), (1, 1, 1)),
                           "score": [0.9, 0.8, 0.7]})]
    out = blob_froc(cands, blobs)
    assert out["series"] == 1 and out["blobs"] == 2
    assert out["sens_at_0.5_fp"] == 0.5 and out["sens_at_2_fp"] == 0.5  # the second blob's candidate is 5 mm off: false
