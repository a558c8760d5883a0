"""A corpus of bad (and good) inputs, built from real files, and what the pipeline must do with each.

Sources: the bundled LIDC-IDRI-0063 crop (``sample_data/ct``, real CT slices) and pydicom's own
test files (``pydicom.data.get_testdata_file``: a real truncated MR, an RT plan without pixels,
a gzip-compressed DICOM, a single-slice CT). Every derived series gets new Study/Series/SOP
Instance UIDs (pydicom ``generate_uid``), so each case is its own series.

``build_corpus(out)`` writes ``out/dicom/`` (one folder tree holding every DICOM case plus two good
series mixed in one folder), ``out/nodules.csv`` (good nodules, one at the volume edge, and bad
rows), and ``out/arrays.npz`` (2D crops of the real slices with NaN/inf in two of them). Each
:class:`Case` names the item that must fail and a fragment of its message. Run as a script to
build the corpus and print the cases, with ``--run`` also run it and print a table of what the
pipeline did: ``python tests/corpus.py /tmp/corpus --run``.
"""

from __future__ import annotations

import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, generate_uid

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SERIES = ROOT / "sample_data" / "ct" / "LIDC-IDRI-0063"
SAMPLE_NODULES = ROOT / "sample_data" / "ct" / "nodules.csv"
DEFLATED_FRAMES = UID("1.2.840.10008.1.2.8.1")  # Deflated Image Frame Compression (DICOM 2025, Sup 244)


@dataclass(frozen=True)
class Case:
    """One corpus case: what was made, from what, and what the pipeline must report."""

    name: str
    made_from: str
    stage: str  # the stage whose errors.csv line names the item ("" for good items)
    item: str  # errors.csv "item" (a file path, "series <uid>" or "nodule <id>")
    message: str  # a fragment the error message must contain
    outcome: str  # what the pipeline does, for the docs


def sample_files(src: Path = SAMPLE_SERIES) -> list[Path]:
    """The sample series' files in spatial order (ascending z)."""
    files = sorted(src.glob("*.dcm"))
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    return [files[i] for i in np.argsort(z)]


def copy_series(files: list[Path], dst: Path, edit: Callable[[Dataset, int], None] | None = None, prefix: str = "") -> str:
    """Copy slices under a new Study/Series UID (new SOP UIDs), applying ``edit(ds, k)`` to slice k."""
    dst.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, study_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if edit:
            edit(ds, k)
        name = dst / f"{prefix}{k:03d}-{f.name}"  # k: a slice listed twice gets two files
        if ds.file_meta.TransferSyntaxUID.is_transfer_syntax:
            ds.save_as(name)
        else:  # a syntax newer than pydicom's dictionary: explicit VR little endian, as the standard defines it
            dcmwrite(name, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    return series_uid


def _deflate_frames(ds: Dataset, k: int) -> None:
    """Re-encode the pixels with Deflated Image Frame Compression: each frame raw-deflated
    (RFC 1951) into one fragment. Real compression of real pixels; GDCM has no decoder for it."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    ds.PixelData = encapsulate([c.compress(ds.PixelData) + c.flush()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = DEFLATED_FRAMES


def _tilt(deg: float) -> Callable[[Dataset, int], None]:
    """Slice planes tilted about x by ``deg`` while the table steps along z (gantry tilt)."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))

    def edit(ds: Dataset, k: int) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, round(float(c), 6), round(float(s), 6)]

    return edit


def build_dicom_cases(root: Path, src: Path = SAMPLE_SERIES) -> list[Case]:
    files = sample_files(src)
    mid = len(files) // 2
    cases: list[Case] = []

    # two good series mixed in one folder: the original and a copy with new UIDs
    mixed = root / "two_series"
    mixed.mkdir(parents=True)
    for f in files:
        shutil.copy(f, mixed / f"a-{f.name}")
    copy_uid = copy_series(files, mixed, prefix="b-")
    original_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    cases.append(Case("two series mixed in one folder", "LIDC sample + a copy with new UIDs, files interleaved",
                      "", f"series {original_uid}", "", "both series ingested"))
    cases.append(Case("(second series of that folder)", "copy", "", f"series {copy_uid}", "", "ingested"))

    bad = root / "files"
    bad.mkdir()
    data = files[mid].read_bytes()
    (bad / "truncated.dcm").write_bytes(data[: len(data) - len(data) // 3])  # cut inside the pixel data
    cases.append(Case("truncated file", "LIDC slice, last third cut off", "ingest", str(bad / "truncated.dcm"),
                      "truncated file", "file skipped; its series goes on without it"))
    shutil.copy(get_testdata_file("MR_truncated.dcm"), bad / "MR_truncated.dcm")
    cases.append(Case("truncated file (pydicom)", "pydicom MR_truncated.dcm", "ingest", str(bad / "MR_truncated.dcm"),
                      "truncated file", "file skipped"))
    (bad / "zero.dcm").write_bytes(b"")
    cases.append(Case("zero-byte file", "empty file", "ingest", str(bad / "zero.dcm"), "empty file (0 bytes)", "file skipped"))
    shutil.copy(get_testdata_file("zipMR.gz"), bad / "zipMR.gz")
    cases.append(Case("not a DICOM file", "pydicom zipMR.gz (a gzip archive)", "ingest", str(bad / "zipMR.gz"), "not a DICOM file", "file skipped"))
    (bad / "dangling.dcm").symlink_to(bad / "moved_away.dcm")
    cases.append(Case("dangling link (file gone)", "symbolic link to a missing file", "ingest", str(bad / "dangling.dcm"),
                      "cannot be read (No such file or directory)", "file skipped"))
    def slice_without(tag: str, name: str) -> None:  # the middle slice, one element removed, as its own series
        ds = pydicom.dcmread(files[mid])
        delattr(ds, tag)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
        ds.save_as(bad / name)

    slice_without("PixelData", "no_pixels.dcm")
    cases.append(Case("DICOM without pixel data", "LIDC slice with Pixel Data removed", "ingest", str(bad / "no_pixels.dcm"),
                      "no pixel data", "file skipped"))
    shutil.copy(get_testdata_file("rtplan.dcm"), bad / "rtplan.dcm")
    cases.append(Case("DICOM that is not an image", "pydicom rtplan.dcm (RT Plan)", "", str(bad / "rtplan.dcm"),
                      "", "ignored: listed in ignored.csv, counted in one note"))
    slice_without("ImagePositionPatient", "no_position.dcm")
    cases.append(Case("CT image without its position", "LIDC slice with ImagePositionPatient removed", "ingest", str(bad / "no_position.dcm"),
                      "not a cross-sectional image slice", "file skipped"))
    (bad / "annotations.xml").write_text('<?xml version="1.0"?>\n<LidcReadMessage/>\n')
    cases.append(Case("annotation file beside the slices", "LIDC-style XML", "", str(bad / "annotations.xml"),
                      "", "ignored: listed in ignored.csv, counted in one note"))

    def series_case(name: str, folder: str, made_from: str, message: str, files_: list[Path], edit=None) -> None:
        uid = copy_series(files_, root / folder, edit)
        cases.append(Case(name, made_from, "ingest", f"series {uid}", message, "series rejected, others go on"))

    series_case("missing slice in the middle", "missing_slice", "LIDC series without its middle slice", "1 missing slice(s)",
                files[:mid] + files[mid + 1:])
    series_case("duplicate slice positions", "duplicate", "LIDC series with one slice stored twice", "duplicate slice position",
                files[:mid + 1] + [files[mid]] + files[mid + 1:])

    def shift_upper(ds: Dataset, k: int) -> None:
        if k > mid:
            ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 1.25  # one gap of 1.5x the spacing

    series_case("non-uniform slice spacing", "nonuniform", "LIDC series, upper half shifted by half a slice", "non-uniform slice spacing",
                files, shift_upper)

    def one_coronal(ds: Dataset, k: int) -> None:
        if k == mid:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    series_case("mixed orientations", "mixed_orientation", "LIDC series with one slice relabelled coronal", "2 different slice orientations",
                files, one_coronal)
    series_case("gantry-tilted series", "tilted", "LIDC series, planes tilted 15° about x, table stepping along z", "gantry tilt", files, _tilt(15.0))
    series_case("single-slice series", "single_slice", "one LIDC slice as its own series", "only 1 slice(s)", [files[mid]])
    single = root / "single_slice" / "CT_small.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), single)
    cases.append(Case("single-slice series (pydicom)", "pydicom CT_small.dcm", "ingest", f"series {pydicom.dcmread(single).SeriesInstanceUID}",
                      "only 1 slice(s)", "series rejected"))
    series_case("unsupported transfer syntax (no decoder)", "deflate_frames", "LIDC series re-encoded with Deflated Image Frame Compression (zlib)",
                "unsupported transfer syntax Deflated Image Frame Compression", files, _deflate_frames)
    return cases


def build_nodules(path: Path, dicom_cases: list[Case], sample_nodules: Path = SAMPLE_NODULES, volume_z_top: float | None = None) -> list[Case]:
    """The sample's nodules plus one at the volume edge and bad rows (unknown IDs, outside, NaN)."""
    good = pd.read_csv(sample_nodules, dtype=str)
    uid = good["series_uid"][0]
    rejected = next(c.item.split(" ", 1)[1] for c in dicom_cases if c.name == "missing slice in the middle")
    top = (volume_z_top if volume_z_top is not None
           else max(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in SAMPLE_SERIES.glob("*.dcm")))
    base = good.iloc[0].to_dict()
    rows = [
        {**base, "nodule_id": "edge", "z_mm": f"{top - 2.0:.2f}"},
        {**base, "nodule_id": "outside", "z_mm": f"{top + 40.0:.2f}"},
        {**base, "nodule_id": "unknown-series", "series_uid": generate_uid()},
        {**base, "nodule_id": "unknown-patient", "series_uid": "", "patient_id": "NO-SUCH-PATIENT"},
        {**base, "nodule_id": "rejected-series", "series_uid": rejected},
        {**base, "nodule_id": "no-coordinate", "x_mm": ""},
    ]
    pd.concat([good, pd.DataFrame(rows)], ignore_index=True).to_csv(path, index=False)
    return [
        Case("nodule at the volume edge", "sample nodule moved 2 mm below the top slice", "", f"{uid}:edge", "", "cube padded with air, padded=True"),
        Case("nodule outside the volume", "sample nodule moved 40 mm above the top slice", "extract",
             "nodule outside", "lies outside series", "nodule skipped"),
        # a table that covers more scans than the input is normal: one note, no error (see NOTED)
        Case("nodule with unknown series ID", "new random series UID", "",
             "nodule unknown-series", "", "nodule skipped, counted in one note"),
        Case("nodule with unknown patient ID", "no series_uid, patient NO-SUCH-PATIENT", "",
             "nodule unknown-patient", "", "nodule skipped, counted in one note"),
        Case("nodule in a rejected series", "series of the missing-slice case", "extract",
             "nodule rejected-series", "which failed ingest", "nodule skipped"),
        Case("nodule without a coordinate", "x_mm empty", "extract", "nodule no-coordinate", "non-finite coordinates", "nodule skipped"),
    ]


def build_arrays(path: Path, files: list[Path] | None = None, size: int = 32) -> list[Case]:
    """2D HU crops of the real slices (label 1: mostly tissue, 0: mostly lung), NaN and inf in two."""
    images = []
    for f in files or sample_files():
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        for r in range(64, hu.shape[0] - size - 64, 48):
            for c in range(64, hu.shape[1] - size - 64, 48):
                images.append(hu[r : r + size, c : c + size])
    images = np.stack(images)
    labels = (images.mean(axis=(1, 2)) > -500).astype(np.int64)
    images[3, 5, 7] = np.nan
    images[11, 0, 0] = np.inf
    np.savez(path, images=images, labels=labels)
    return [Case("NaN in array input", "crop of a real slice, one voxel NaN", "ingest", "image img000003", "contains NaN or inf", "image left out"),
            Case("inf in array input", "crop of a real slice, one voxel inf", "ingest", "image img000011", "contains NaN or inf", "image left out")]


def build_corpus(out: Path) -> dict[str, list[Case]]:
    """Write the whole corpus under ``out``; returns the cases of each part."""
    out.mkdir(parents=True, exist_ok=True)
    dicom = build_dicom_cases(out / "dicom")
    return {"dicom": dicom, "nodules": build_nodules(out / "nodules.csv", dicom), "arrays": build_arrays(out / "arrays.npz")}


def observed_table(cases: list[Case], run_dir: Path) -> str:
    """Markdown: each case and the line ``errors.csv`` of ``run_dir`` has for its item (or its good output)."""
    errors = pd.read_csv(run_dir / "errors.csv", dtype=str)
    lines = ["| case | made from | pipeline | message in errors.csv |", "|---|---|---|---|"]
    for c in cases:
        msg = errors.loc[errors["item"] == c.item, "error"]
        shown = msg.iloc[0].replace(str(run_dir.parent), "…").replace("|", "\\|") if len(msg) else "(no error)"
        lines.append(f"| {c.name} | {c.made_from} | {c.outcome} | {shown} |")
    return "\n".join(lines)


if __name__ == "__main__":
    # python tests/corpus.py OUT [--run]: build the corpus; with --run also run it and print what happened
    import subprocess

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus").resolve()
    parts = build_corpus(target / "corpus")
    for part, cases in parts.items():
        for c in cases:
            print(f"{part:8s} {c.name:45s} {c.stage or 'ok':8s} {c.item}  => {c.message or c.outcome}")
    if "--run" in sys.argv:
        cfg = target / "cfg.yaml"
        cfg.write_text((ROOT / "configs" / "ct_nodules_vae.yaml").read_text()
                       .replace("../sample_data/ct/LIDC-IDRI-0063", str(target / "corpus" / "dicom"))
                       .replace("../sample_data/ct/nodules.csv", str(target / "corpus" / "nodules.csv")))
        fast = ["--set", "train.epochs=1", "--set", "score.mc_samples=2", "--set", "evaluate.bootstrap=20",
                "--set", "extract.background.max_per_series=40"]
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--out", str(target / "run"), *fast],
                              cwd=ROOT, capture_output=True, text=True)
        print(f"\nexit code {proc.returncode}; stderr ends: {proc.stderr.strip().splitlines()[-1]}\n")
        print(observed_table(parts["dicom"] + parts["nodules"], target / "run"))
