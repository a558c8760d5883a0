"""Whole-image 2D maps: the sweep finds a painted blob where it is, and the map's geometry is the image grid's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from conftest import ROOT, validate

from evaluation.image_map import grid_geometry, sweep_images, to_image
from evaluation.map_candidates import voxel_candidates
from models.batch_scoring import score_batches, sweep
from models.detectors.pca.params import PCAParams
from models.zoo import build


def _textured(rng, n, shape):
    """Smooth random backgrounds in [0.3, 0.7] (sums of low-frequency waves), (n, 1, *shape)."""
    r, c = np.mgrid[0:shape[0], 0:shape[1]] / 8.0
    out = []
    for _ in range(n):
        a, b, p, q = rng.uniform(0.5, 1.5, 4)
        out.append(0.5 + 0.1 * np.sin(a * r + p * 6) + 0.1 * np.cos(b * c + q * 6))
    return np.asarray(out, np.float32)[:, None]


def _blob(shape, centre, radius=2.5, height=0.6):
    r, c = np.mgrid[0:shape[0], 0:shape[1]]
    return (height * np.exp(-((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / (2 * radius**2))).astype(np.float32)


@pytest.fixture(scope="module")
def pca16():
    """PCA fitted on 16x16 crops of smooth normal backgrounds: its residual is large only where an image departs from them."""
    torch.manual_seed(0)
    model = build("pca2d", PCAParams(name="pca2d", n_components=12), 1, 16)
    model.fit_arrays(torch.from_numpy(_textured(np.random.default_rng(0), 400, (16, 16))))
    return model.eval()


@pytest.mark.parametrize("centre", [(23, 37), (5, 50), (38, 4)])
def test_a_painted_blob_peaks_within_2_px_of_where_it_was_painted(pca16, centre):
    """A 40x56 image swept by a 16-pixel patch (several windows, Gaussian blending, edges included): the top
    candidate of the voxel map lies within 2 px of the blob's centre."""
    cfg = validate({"map": {"overlap": 0.5, "mc_samples": 1, "batch_size": 8}}, base_dir=ROOT)
    image = _textured(np.random.default_rng(1), 1, (40, 56))
    image[0, 0] += _blob((40, 56), centre)
    voxel, score, windows = sweep_images(pca16, image, cfg, "pca_recon")
    assert voxel.shape == score.shape == (1, 40, 56) and windows > 6
    found, values, sizes, _ = voxel_candidates(voxel[0], np.ones((40, 56), bool), (1.0, 1.0), 1.0, 8.0, 3, 0.5)
    assert np.hypot(*(found[0] - np.asarray(centre))) <= 2.0, (found, centre)
    assert values[0] > 2 * values[1:].max(initial=0) and 2 <= sizes[0] <= 14
    flat = sweep_images(pca16, _textured(np.random.default_rng(1), 1, (40, 56)), cfg, "pca_recon")[0]
    assert voxel.max() > 3 * flat.max()  # the blob, not the sweep, makes the peak


def test_the_map_is_written_on_the_image_grid_and_a_candidate_maps_back_to_its_pixel():
    """A 2D map with the grid's spacing and origin: ITK's x is the column, so the candidate's (x_mm, y_mm) is
    its (column, row) again, and the pixel edges sit where the source image's do."""
    row = pd.Series({"grid_shape": "30x40", "spacing_mm": "0.2 0.25", "orig_shape": "150x160"})
    spacing, origin, known = grid_geometry(row, 1.0)
    assert known and spacing == pytest.approx((1.0, 1.0)) and origin == pytest.approx((0.4, 0.375))
    img = to_image(np.zeros((30, 40), np.float32), spacing, origin)
    assert img.GetSize() == (40, 30) and img.GetSpacing() == pytest.approx((1.0, 1.0))
    r, c = 12, 31
    x_mm, y_mm = origin[1] + c * spacing[1], origin[0] + r * spacing[0]
    assert img.TransformPhysicalPointToIndex((x_mm, y_mm)) == (c, r)
    # the grid's first pixel edge coincides with the source's (source pixel 0 centred at 0)
    assert origin[0] - spacing[0] / 2 == pytest.approx(-0.2 / 2) and origin[1] - spacing[1] / 2 == pytest.approx(-0.25 / 2)
    rgb = to_image(np.zeros((3, 30, 40), np.float32), spacing, origin)
    assert rgb.GetNumberOfComponentsPerPixel() == 3 and rgb.GetSize() == (40, 30)


def test_grid_geometry_without_a_physical_pixel_size_uses_source_pixels():
    """A photograph resized to a 128 px short side: one unit = one pixel of the source file, so the map lies on it in Slicer."""
    spacing, origin, known = grid_geometry(pd.Series({"grid_shape": "128x171", "spacing_mm": "", "orig_shape": "450x600"}), 1.0)
    assert not known and spacing == pytest.approx((450 / 128, 600 / 171)) and origin[0] == pytest.approx((450 / 128 - 1) / 2)
    # array datasets (no orig_shape): resampled to ingest.spacing_mm when the spacing was known, else their own grid
    assert grid_geometry(pd.Series({"grid_shape": "28x28", "spacing_mm": "0.5"}), 1.0)[0] == (1.0, 1.0)
    assert grid_geometry(pd.Series({"grid_shape": "28x28"}), 1.0)[:2] == ((1.0, 1.0), (0.0, 0.0))


def test_written_map_reads_back_with_its_geometry(tmp_path):
    from preprocessing.nifti import write_nifti

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "m.nii.gz"
    write_nifti(path, to_image(a, (2.0, 0.5), (1.0, 0.0)))
    back = sitk.ReadImage(str(path))
    assert back.GetSpacing() == pytest.approx((0.5, 2.0)) and np.array_equal(sitk.GetArrayFromImage(back), a)


def test_whole_image_scoring_finds_an_off_centre_blob_the_centre_patch_misses(pca16):
    """``score.region: whole``: the 16-px patch swept over a 40x56 image scores it by its worst window,
    so a blob in a corner raises the image's score, while the centre patch does not see it; on an image
    the patch's own size, whole and centre are the same score."""
    image = _textured(np.random.default_rng(1), 2, (40, 56))
    image[1, 0] += _blob((40, 56), (6, 49))
    x = torch.from_numpy(image)
    whole = next(score_batches(pca16, image, 1, 2, 0, torch.device("cpu"), region="whole", overlap=0.25))
    centre = next(score_batches(pca16, image[:, :, 12:28, 20:36], 1, 2, 0, torch.device("cpu")))
    assert whole[1].shape == (2, 1, 40, 56)
    assert whole[0]["pca_recon"][1] > 3 * whole[0]["pca_recon"][0]
    assert centre[0]["pca_recon"][1] < 1e-3 * whole[0]["pca_recon"][1]  # the centre patch is normal texture
    maps, windows = sweep(pca16, x, 1, 0, 4, 0.25)
    assert windows == 2 * 3 * 5  # step 12: rows 0, 12, 24 x columns 0, 12, 24, 36, 40 (MONAI ends on the far edge)
    assert np.isclose(whole[0]["pca_recon"][1], maps["pca_recon"][1].amax().item())
    same = next(score_batches(pca16, image[:, :, :16, :16], 1, 2, 0, torch.device("cpu"), region="whole"))
    plain = next(score_batches(pca16, image[:, :, :16, :16], 1, 2, 0, torch.device("cpu")))
    assert np.allclose(same[0]["pca_recon"], plain[0]["pca_recon"], rtol=1e-5)
