"""Privacy (no PHI in any output) and determinism (same config + seed → same scores) on real DICOM."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pydicom
from conftest import ROOT, SAMPLE_CT, run_cli
from corpus import copy_series, sample_files

SENTINEL_NAME = "Zzsentinel^Phiname"
SENTINEL_BIRTH = "19011231"
PHI_TAGS = ("PatientAddress", "OtherPatientNames", "ReferringPhysicianName", "InstitutionName", "PatientTelephoneNumbers")
FAST = ["--set", "train.epochs=2", "--set", "score.mc_samples=4", "--set", "evaluate.bootstrap=50"]


def _config(tmp_path: Path, dicom: Path) -> Path:
    text = (ROOT / "configs" / "ct_nodules_vae.yaml").read_text()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text.replace("../sample_data/ct/LIDC-IDRI-0063", str(dicom))
                   .replace("../sample_data/ct/nodules.csv", str(SAMPLE_CT / "nodules.csv")))
    return cfg


def _phi(ds, k: int = 0) -> None:
    ds.PatientName = SENTINEL_NAME
    ds.PatientBirthDate = SENTINEL_BIRTH
    for tag in PHI_TAGS:
        setattr(ds, tag, f"Zzsentinel{PHI_TAGS.index(tag)}")  # short enough for every VR


def test_patient_name_and_birth_date_never_reach_outputs(tmp_path):
    """PHI sentinels in good and bad files alike: no output, file name, error message or stream shows them."""
    dicom = tmp_path / "dicom"
    shutil.copytree(SAMPLE_CT / "LIDC-IDRI-0063", dicom)
    for f in dicom.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        _phi(ds)
        ds.save_as(f)
    files = sample_files(dicom)
    mid = len(files) // 2
    copy_series(files[:mid] + files[mid + 1:], tmp_path / "dicom_bad" / "gappy")  # rejected series (missing slice)
    copy_series(files[:1], tmp_path / "dicom_bad" / "single")  # rejected series (one slice)
    shutil.move(tmp_path / "dicom_bad", dicom / "bad")
    data = files[mid].read_bytes()
    (dicom / "bad" / "truncated.dcm").write_bytes(data[: len(data) // 2])  # the header with the sentinels survives
    ds = pydicom.dcmread(files[mid])
    del ds.PixelData
    ds.save_as(dicom / "bad" / "no_pixels.dcm")
    (dicom / "broken.dcm").write_bytes(b"not dicom")
    out = tmp_path / "run"
    proc = run_cli("run", str(_config(tmp_path, dicom)), "--out", str(out), *FAST)
    assert proc.returncode == 1, proc.stderr  # the bad files and series are item errors
    assert len(pd.read_csv(out / "errors.csv")) == 5
    needles = [SENTINEL_NAME.encode(), b"Zzsentinel", b"Phiname", SENTINEL_BIRTH.encode()]
    for stream in (proc.stdout, proc.stderr):
        assert not any(n.decode() in stream for n in needles)
    for path in out.rglob("*"):
        assert not any(n.decode() in path.name for n in needles)
        if path.is_file():  # every output, torch archives (their config entries are plain text) included
            data = path.read_bytes()
            assert not any(n in data for n in needles), path


def test_same_config_and_seed_give_identical_scores(tmp_path):
    cfg = str(ROOT / "configs" / "ct_nodules_vae.yaml")
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        proc = run_cli("run", cfg, "--out", str(out), *FAST)
        assert proc.returncode == 0, proc.stderr
    sa, sb = pd.read_csv(a / "scores.csv"), pd.read_csv(b / "scores.csv")
    pd.testing.assert_frame_equal(sa, sb, check_exact=False, rtol=1e-6)
    assert (a / "splits.csv").read_bytes() == (b / "splits.csv").read_bytes()
    assert (a / "samples.csv").read_bytes() == (b / "samples.csv").read_bytes()
