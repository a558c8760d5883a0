"""Copies of a DICOM series under new UIDs: distinct series for batch benchmarks and tests.

Only the Study/Series/SOP Instance UIDs change (fresh ``pydicom.uid.generate_uid`` values); pixels
and geometry are the original's, so every copy ingests to the same volume under another name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pydicom
from pydicom.uid import generate_uid


def copy_series(src: Path, dst: Path, drop: Iterable[int] = ()) -> str:
    """Copy every DICOM file of folder ``src`` into ``dst`` with new UIDs; returns the new SeriesInstanceUID.

    ``drop`` lists positions (in sorted file-name order) of files to leave out, e.g. to make a
    series with a missing slice.
    """
    dst.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    skip = set(drop)
    for i, path in enumerate(sorted(p for p in src.iterdir() if p.is_file())):
        if i in skip:
            continue
        ds = pydicom.dcmread(path)
        sop = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.save_as(dst / path.name, enforce_file_format=True)
    return series
