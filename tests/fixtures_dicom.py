"""Synthetic DICOM CT helpers shared by the unit tests (import with ``from fixtures_dicom import ...``).

Kept out of ``conftest.py`` on purpose: plain functions, no pytest magic, so any test module
can build a tiny CT series in ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROWS = 16
COLS = 16
PIXEL_SPACING = (0.7, 0.8)  # (row spacing, column spacing) mm
INTERCEPT = -1024.0
IDENTITY_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def slice_pixels(k: int, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Stored (raw) int16 values of the slice at spatial position k: unique per slice and voxel."""
    r, c = np.mgrid[0:rows, 0:cols]
    return (100 * k + 3 * r + c + 10).astype(np.int16)


def write_ct_slice(path: Path, pixels: np.ndarray, position: Sequence[float], *, series_uid: str, study_uid: str,
                   patient_id: str = "PAT001", instance_number: int | None = 1,
                   orientation: Sequence[float] = IDENTITY_ORIENTATION,
                   pixel_spacing: Sequence[float] = PIXEL_SPACING, intercept: float = INTERCEPT, slope: float = 1.0) -> Path:
    """Write one CT Image Storage slice (explicit VR little endian, signed int16 pixels)."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.PatientName = "Synthetic^Phantom"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [f"{float(v):.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{float(v):.6f}" for v in orientation]
    ds.PixelSpacing = [f"{float(v):.6f}" for v in pixel_spacing]
    ds.SliceThickness = "1.0"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def make_ct_series(folder: Path, n_slices: int = 10, *, z0: float = -50.0, dz: float = 2.5,
                   origin_xy: tuple[float, float] = (-5.0, 12.0), positions: Sequence[Sequence[float]] | None = None,
                   orientations: Sequence[Sequence[float]] | None = None, instance_numbers: Sequence[int | None] | None = None,
                   file_order: Sequence[int] | None = None, series_uid: str | None = None, patient_id: str = "PAT001",
                   prefix: str = "slice", study_uid: str | None = None) -> dict:
    """Write a synthetic CT series; slice ``k`` (spatial order) holds :func:`slice_pixels` ``(k)``.

    ``positions``/``orientations`` override the default axial geometry per spatial index k.
    ``instance_numbers[k]`` is the InstanceNumber of slice k (default k + 1).
    ``file_order`` permutes which file name receives which slice (file i gets slice file_order[i]).
    Returns a dict with the folder, series uid, list of paths (index = spatial k) and positions.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    if positions is None:
        positions = [(origin_xy[0], origin_xy[1], z0 + k * dz) for k in range(n_slices)]
    n = len(positions)
    orientations = orientations or [IDENTITY_ORIENTATION] * n
    instance_numbers = instance_numbers if instance_numbers is not None else [k + 1 for k in range(n)]
    file_order = list(file_order) if file_order is not None else list(range(n))
    paths: list[Path | None] = [None] * n
    for i, k in enumerate(file_order):
        p = folder / f"{prefix}{i:03d}.dcm"
        write_ct_slice(p, slice_pixels(k), positions[k], series_uid=series_uid, study_uid=study_uid,
                       patient_id=patient_id, instance_number=instance_numbers[k], orientation=orientations[k])
        paths[k] = p
    return {"folder": folder, "series_uid": series_uid, "paths": paths, "positions": [tuple(map(float, p)) for p in positions]}
