"""Integration tests on the full real LIDC-IDRI-0063 series in ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from conftest import LIDC_NODULES, LIDC_SERIES, ROOT, needs_shared, run_cli

from preprocessing.geometry import lps_affine, lps_to_ras, world_to_index

pytestmark = [needs_shared, pytest.mark.shared_data]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lidc")
    proc = run_cli("run", str(ROOT / "configs" / "ct_nodules_vae.yaml"), "--out", str(out),
                   "--set", f"ingest.input={LIDC_SERIES}", "--set", f"extract.nodules={LIDC_NODULES}",
                   "--set", "extract.background.stride_mm=32", "--set", "train.epochs=2", "--set", "score.mc_samples=4",
                   "--set", "evaluate.bootstrap=100", timeout=1200)
    assert proc.returncode == 0, proc.stderr
    return out


def test_ingest_is_1mm_and_keeps_physical_extent(full_run):
    series = pd.read_csv(full_run / "series.csv")
    assert len(series) == 1 and series.n_slices[0] == 133
    img = sitk.ReadImage(str(full_run / "volumes" / f"{series.series_uid[0]}.nii.gz"))
    assert np.allclose(img.GetSpacing(), 1.0)
    files = sorted(LIDC_SERIES.glob("*.dcm"))
    z = sorted(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    # origin = the lowest slice's corner voxel, direction identity (axial, LPS)
    assert np.allclose(img.GetOrigin(), [float(first.ImagePositionPatient[0]), float(first.ImagePositionPatient[1]), z[0]], atol=1e-3)
    assert np.allclose(img.GetDirection(), np.eye(3).ravel())
    extent_orig = np.array([511 * 0.78125, 511 * 0.78125, z[-1] - z[0]])  # 399.2, 399.2, 330 mm between voxel centres
    extent_new = np.array(img.GetSize()) - 1.0
    assert np.all(extent_new <= extent_orig + 1e-6) and np.all(extent_orig - extent_new < 1.0)


def test_nodule_centres_are_soft_tissue_surrounded_by_lung(full_run):
    series = pd.read_csv(full_run / "series.csv")
    img = sitk.ReadImage(str(full_run / "volumes" / f"{series.series_uid[0]}.nii.gz"))
    vol = sitk.GetArrayFromImage(img)  # zyx HU
    aff = lps_affine(img)
    nodules = pd.read_csv(LIDC_NODULES)
    assert len(nodules) == 4
    for _, n in nodules.iterrows():
        i, j, k = np.rint(world_to_index(aff, [n.x_mm, n.y_mm, n.z_mm])[0]).astype(int)
        centre = vol[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2].mean()
        assert centre > -750, f"{n.nodule_id}: centre HU {centre:.0f} is not soft tissue / ground glass"
        r = int(n.diameter_mm) + 6  # a shell outside the nodule
        zz, yy, xx = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
        shell = np.abs(np.sqrt(zz**2 + yy**2 + xx**2) - r) < 1.0
        ring = vol[k - r : k + r + 1, j - r : j + r + 1, i - r : i + r + 1][shell]
        lung = float(np.mean(ring < -600))
        print(n.nodule_id, f"centre {centre:.0f} HU, lung fraction of shell {lung:.2f}")
        assert lung > 0.4, f"{n.nodule_id}: only {lung:.0%} of the surrounding shell is lung (< -600 HU)"


def test_known_points_agree_between_simpleitk_and_nibabel(full_run):
    """The four annotated nodule centres map to the same voxel through SimpleITK (LPS) and nibabel (RAS)."""
    series = pd.read_csv(full_run / "series.csv")
    path = full_run / "volumes" / f"{series.series_uid[0]}.nii.gz"
    img = sitk.ReadImage(str(path))
    nii = nib.load(path)
    nodules = pd.read_csv(LIDC_NODULES)
    for _, n in nodules.iterrows():
        lps = np.array([n.x_mm, n.y_mm, n.z_mm])
        via_sitk = np.array(img.TransformPhysicalPointToContinuousIndex(lps.tolist()))
        via_ours = world_to_index(lps_affine(img), lps)[0]
        via_nib = nib.affines.apply_affine(np.linalg.inv(nii.affine), lps_to_ras(lps))
        assert np.allclose(via_sitk, via_ours, atol=1e-6)
        assert np.allclose(via_sitk, via_nib, atol=1e-4)


def test_every_nodule_extracted_and_overlay_shares_ct_affine(full_run):
    samples = pd.read_csv(full_run / "samples.csv")
    nod = samples[samples.kind == "nodule"]
    assert len(nod) == 4 and not nod.padded.any()
    # cube centre (a voxel centre) within half a voxel diagonal of the annotated centre
    table = pd.read_csv(LIDC_NODULES).set_index("nodule_id")
    for _, s in nod.iterrows():
        t = table.loc[s.nodule_id]
        assert np.linalg.norm([s.x_mm - t.x_mm, s.y_mm - t.y_mm, s.z_mm - t.z_mm]) <= np.sqrt(3) / 2 + 1e-6
        aff = np.array(s.affine_lps.split(), float).reshape(4, 4)
        assert np.allclose(aff[:3, :3] @ [16, 16, 16] + aff[:3, 3], [s.x_mm, s.y_mm, s.z_mm], atol=1e-4)
    uid = pd.read_csv(full_run / "series.csv").series_uid[0]
    ct = nib.load(full_run / "volumes" / f"{uid}.nii.gz")
    ov = nib.load(full_run / "overlays" / f"{uid}_residual.nii.gz")
    assert np.array_equal(ov.affine, ct.affine) and ov.shape == ct.shape
    assert json.loads((full_run / "metrics.json").read_text())["primary"]["n_anomalous"] >= 1


def _peak_lps(path: Path, value: float | None = None) -> np.ndarray:
    """World (LPS) position of an overlay's peak voxel (or of the centroid of voxels == value), via nibabel."""
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    ijk = np.argwhere(data == value).mean(0) if value is not None else np.array(np.unravel_index(np.argmax(data), data.shape), float)
    return lps_to_ras(nib.affines.apply_affine(img.affine, ijk))  # RAS → LPS (the flip is its own inverse)


def test_overlays_sit_on_the_annotated_nodules(full_run):
    """Read back with nibabel, as 3D Slicer does: markers and residual peaks lie within 2 mm of each nodule."""
    from evaluation.overlays import paint, write_overlay

    uid = pd.read_csv(full_run / "series.csv").series_uid[0]
    table = pd.read_csv(LIDC_NODULES)
    mask = full_run / "overlays" / f"{uid}_nodules.nii.gz"
    samples = pd.read_csv(full_run / "samples.csv")
    nod = samples[samples.kind == "nodule"].reset_index(drop=True)
    ct = sitk.ReadImage(str(full_run / "volumes" / f"{uid}.nii.gz"))
    for label, s in enumerate(nod.itertuples(), start=1):
        t = table.set_index("nodule_id").loc[s.nodule_id]
        annotated = np.array([t.x_mm, t.y_mm, t.z_mm])
        assert np.linalg.norm(_peak_lps(mask, float(label)) - annotated) < 2.0
        # a residual with a single bright voxel at the centre of the scored patch, painted by the
        # evaluate stage's own code path, peaks on the nodule
        block = np.zeros((28, 28, 28), np.float32)
        block[14, 14, 14] = 1.0
        start = np.array([s.start_i, s.start_j, s.start_k]) + 2
        path = full_run / f"peak_{label}.nii.gz"
        write_overlay(ct, paint(ct.GetSize()[::-1], start[None], [block]), path)
        assert np.linalg.norm(_peak_lps(path) - annotated) < 2.0
