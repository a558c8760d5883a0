"""Coordinate frames: LPS/RAS affines, index<->world maps and agreement with SimpleITK/nibabel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing.geometry import (
    LPS_TO_RAS,
    index_to_world,
    lps_affine,
    lps_to_ras,
    ras_affine,
    ras_to_lps,
    sub_affine,
    world_to_index,
)

SIZE = (7, 5, 4)  # x, y, z
SPACING = (0.7, 1.3, 2.5)
ORIGIN = (-12.5, 33.0, -101.25)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture
def oblique_image() -> sitk.Image:
    arr = np.arange(np.prod(SIZE), dtype=np.float32).reshape(SIZE[::-1])
    img = sitk.GetImageFromArray(arr)  # array zyx -> image size xyz
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(tuple(rotation(0.3, -0.2, 0.5).ravel()))
    return img


def test_lps_affine_matches_sitk_for_every_corner(oblique_image):
    aff = lps_affine(oblique_image)
    assert aff.shape == (4, 4)
    np.testing.assert_array_equal(aff[3], [0, 0, 0, 1])
    for idx in [(0, 0, 0), (6, 0, 0), (0, 4, 0), (0, 0, 3), (6, 4, 3), (3, 2, 1)]:
        expected = oblique_image.TransformIndexToPhysicalPoint(idx)
        np.testing.assert_allclose(index_to_world(aff, idx)[0], expected, atol=1e-9)
    # continuous index too
    cidx = (1.25, 3.5, 2.75)
    np.testing.assert_allclose(index_to_world(aff, cidx)[0], oblique_image.TransformContinuousIndexToPhysicalPoint(cidx), atol=1e-9)


def test_column_norms_are_spacings(oblique_image):
    aff = lps_affine(oblique_image)
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), SPACING, atol=1e-12)
    np.testing.assert_allclose(aff[:3, 3], ORIGIN)


def test_world_index_round_trip(oblique_image):
    aff = lps_affine(oblique_image)
    rng = np.random.default_rng(0)
    idx = rng.uniform(-2, 8, size=(50, 3))
    world = index_to_world(aff, idx)
    assert world.shape == (50, 3)
    np.testing.assert_allclose(world_to_index(aff, world), idx, atol=1e-9)
    pts = rng.uniform(-100, 100, size=(20, 3))
    np.testing.assert_allclose(index_to_world(aff, world_to_index(aff, pts)), pts, atol=1e-9)


def test_known_point_world_to_index(oblique_image):
    aff = lps_affine(oblique_image)
    for idx in [(2, 3, 1), (0, 0, 0), (6, 4, 3)]:
        p = oblique_image.TransformIndexToPhysicalPoint(idx)
        got = world_to_index(aff, p)
        assert got.shape == (1, 3)
        np.testing.assert_allclose(got[0], idx, atol=1e-9)
        assert tuple(np.round(got[0]).astype(int)) == oblique_image.TransformPhysicalPointToIndex(p)


def test_ras_affine_is_lps_flipped(oblique_image):
    lps, ras = lps_affine(oblique_image), ras_affine(oblique_image)
    np.testing.assert_allclose(ras[:2], -lps[:2])
    np.testing.assert_allclose(ras[2:], lps[2:])
    np.testing.assert_array_equal(LPS_TO_RAS, np.diag([-1.0, -1.0, 1.0, 1.0]))


def test_nifti_written_by_sitk_reads_with_ras_affine(oblique_image, tmp_path):
    path = tmp_path / "img.nii.gz"
    sitk.WriteImage(oblique_image, str(path))
    nii = nib.load(path)
    assert np.allclose(nii.affine, ras_affine(oblique_image), atol=1e-4)
    assert not np.allclose(nii.affine, lps_affine(oblique_image), atol=1e-4)
    # the voxel at index ijk is data[i, j, k] in nibabel and array[k, j, i] in SimpleITK
    data = np.asarray(nii.dataobj)
    arr = sitk.GetArrayFromImage(oblique_image)
    assert data.shape == SIZE
    assert data[5, 1, 2] == arr[2, 1, 5]
    # a world point: RAS from nibabel's affine == lps_to_ras of SimpleITK's LPS point
    idx = (5, 1, 2)
    ras_pt = nib.affines.apply_affine(nii.affine, idx)
    np.testing.assert_allclose(ras_pt, lps_to_ras(oblique_image.TransformIndexToPhysicalPoint(idx)), atol=1e-3)


def test_lps_to_ras_flips_x_and_y_only():
    pts = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, -6.0]])
    out = lps_to_ras(pts)
    np.testing.assert_array_equal(out, [[-1.0, -2.0, 3.0], [4.0, -5.5, -6.0]])
    np.testing.assert_array_equal(pts, [[1.0, 2.0, 3.0], [-4.0, 5.5, -6.0]])  # input not modified
    np.testing.assert_array_equal(ras_to_lps(out), pts)
    np.testing.assert_array_equal(lps_to_ras([1, 2, 3]), [-1.0, -2.0, 3.0])  # ints and a single point


def test_sub_affine_origin(oblique_image):
    aff = lps_affine(oblique_image)
    sub = sub_affine(aff, np.array([2, 1, 3]))
    np.testing.assert_allclose(sub[:3, :3], aff[:3, :3])
    np.testing.assert_allclose(index_to_world(sub, (0, 0, 0))[0], oblique_image.TransformIndexToPhysicalPoint((2, 1, 3)))
    np.testing.assert_allclose(index_to_world(sub, (1, 2, 0))[0], oblique_image.TransformIndexToPhysicalPoint((3, 3, 3)), atol=1e-9)
    np.testing.assert_array_equal(aff[:3, 3], ORIGIN)  # parent unchanged
