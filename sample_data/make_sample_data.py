"""Regenerate ``sample_data/ct`` from the full LIDC-IDRI-0063 series.

The bundled sample is a real CT crop: an axial slab (z from -85 to -161 mm, two annotated
nodules) cut in-plane to the thorax so the lungs stay enclosed by the chest wall. Each slice
stays a valid DICOM file: pixel data, Rows/Columns and ImagePositionPatient are updated, new
UIDs are derived deterministically, and the derivation is recorded in the header.

Usage: python sample_data/make_sample_data.py SRC_SERIES_DIR SRC_NODULES_CSV
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.uid import generate_uid

Z_RANGE_MM = (-161.0, -85.0)  # inclusive slab, patient z (LPS)
ROWS = slice(112, 400)  # image rows kept (y index)
COLS = slice(80, 432)  # image columns kept (x index)
OUT = Path(__file__).resolve().parent / "ct"


def main(src: Path, nodules_csv: Path) -> None:
    dicom_dir = OUT / "LIDC-IDRI-0063"
    dicom_dir.mkdir(parents=True, exist_ok=True)
    kept = 0
    new_series = new_study = None
    for path in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        z = float(ds.ImagePositionPatient[2])
        if not (Z_RANGE_MM[0] <= z <= Z_RANGE_MM[1]):
            continue
        new_series = generate_uid(entropy_srcs=[ds.SeriesInstanceUID, "medanomaly-sample-v1"])
        new_study = generate_uid(entropy_srcs=[ds.StudyInstanceUID, "medanomaly-sample-v1"])
        pixels = ds.pixel_array[ROWS, COLS].copy()
        row_cos = np.array(ds.ImageOrientationPatient[:3], float)
        col_cos = np.array(ds.ImageOrientationPatient[3:], float)
        dy, dx = (float(v) for v in ds.PixelSpacing)  # DICOM: row spacing, column spacing
        origin = np.array(ds.ImagePositionPatient, float)
        origin = origin + row_cos * COLS.start * dx + col_cos * ROWS.start * dy
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin]
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        ds.SeriesInstanceUID = new_series
        ds.StudyInstanceUID = new_study
        sop = generate_uid(entropy_srcs=[ds.SOPInstanceUID, "medanomaly-sample-v1"])
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.DerivationDescription = "Cropped from LIDC-IDRI-0063 (TCIA, CC BY 3.0) for medanomaly sample_data"
        ds.save_as(dicom_dir / path.name, enforce_file_format=True)
        kept += 1
    nodules = pd.read_csv(nodules_csv)
    lo, hi = Z_RANGE_MM
    inside = nodules[(nodules.z_mm > lo) & (nodules.z_mm < hi)].copy()
    inside["series_uid"] = new_series
    inside.to_csv(OUT / "nodules.csv", index=False)
    print(f"wrote {kept} slices, {len(inside)} nodules, series {new_series}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
