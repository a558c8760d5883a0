"""Overlay geometry on a synthetic volume with an oblique direction matrix and anisotropic spacing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from evaluation.overlays import nodule_mask, paint, write_overlay
from preprocessing.geometry import lps_affine, lps_to_ras, world_to_index


def test_oblique_overlay_peak_maps_to_the_same_world_point(tmp_path):
    img = sitk.Image(40, 50, 30, sitk.sitkInt16)
    img.SetSpacing((0.8, 1.0, 1.5))
    img.SetOrigin((-20.0, 35.5, -110.0))
    rot = sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5)  # a proper rotation: oblique axes
    img.SetDirection(rot.GetMatrix())
    ct_path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(img, str(ct_path))
    world = np.array([-5.0, 50.0, -95.0])  # LPS mm, inside the volume
    ijk = np.rint(world_to_index(lps_affine(img), world)[0]).astype(int)
    snapped = np.array(img.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
    block = np.zeros((5, 5, 5), np.float32)
    block[2, 2, 2] = 7.0
    out = tmp_path / "ov.nii.gz"
    write_overlay(img, paint(img.GetSize()[::-1], (ijk - 2)[None], [block]), out)
    ov, ct = nib.load(out), nib.load(ct_path)
    assert np.allclose(ov.affine, ct.affine, atol=1e-5)
    peak = np.unravel_index(np.argmax(np.asarray(ov.dataobj)), ov.shape)
    ras = nib.affines.apply_affine(ov.affine, peak)
    assert np.allclose(lps_to_ras(ras), snapped, atol=1e-3)
    mask = nodule_mask(img.GetSize()[::-1], ijk[None], radius_vox=1)
    assert mask[ijk[2], ijk[1], ijk[0]] == 1 and mask.sum() == 7  # a 6-connected ball of radius 1
