"""Privacy (no PHI in any output) and determinism (same config + seed → same scores) on real DICOM."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pydicom

from conftest import ROOT, SAMPLE_CT, run_cli

SENTINEL_NAME = "Zzsentinel^Phiname"
SENTINEL_BIRTH = "19011231"
FAST = ["--set", "train.epochs=2", "--set", "score.mc_samples=4", "--set", "evaluate.bootstrap=50"]


def _config(tmp_path: Path, dicom: Path) -> Path:
    text = (ROOT / "configs" / "ct_nodules.yaml").read_text()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text.replace("../sample_data/ct/LIDC-IDRI-0063", str(dicom)).replace("../sample_data/ct/nodules.csv", str(SAMPLE_CT / "nodules.csv")))
    return cfg


def test_patient_name_and_birth_date_never_reach_outputs(tmp_path):
    dicom = tmp_path / "dicom"
    shutil.copytree(SAMPLE_CT / "LIDC-IDRI-0063", dicom)
    for f in dicom.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PatientName = SENTINEL_NAME
        ds.PatientBirthDate = SENTINEL_BIRTH
        ds.save_as(f)
    (dicom / "broken.dcm").write_bytes(b"not dicom")  # an error message must not leak either
    out = tmp_path / "run"
    proc = run_cli("run", str(_config(tmp_path, dicom)), "--out", str(out), *FAST)
    assert proc.returncode == 1, proc.stderr  # the broken file is an item error
    needles = [SENTINEL_NAME.encode(), b"Zzsentinel", b"Phiname", SENTINEL_BIRTH.encode()]
    for stream in (proc.stdout, proc.stderr):
        assert not any(n.decode() in stream for n in needles)
    for path in out.rglob("*"):
        assert not any(n.decode() in path.name for n in needles)
        if path.is_file() and path.suffix not in (".pt",):
            data = path.read_bytes()
            assert not any(n in data for n in needles), path
        elif path.suffix == ".pt":  # torch zip: its config entries are plain text too
            assert not any(n in path.read_bytes() for n in needles), path


def test_same_config_and_seed_give_identical_scores(tmp_path):
    cfg = str(ROOT / "configs" / "ct_nodules.yaml")
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        proc = run_cli("run", cfg, "--out", str(out), *FAST)
        assert proc.returncode == 0, proc.stderr
    sa, sb = pd.read_csv(a / "scores.csv"), pd.read_csv(b / "scores.csv")
    pd.testing.assert_frame_equal(sa, sb, check_exact=False, rtol=1e-6)
    assert (a / "splits.csv").read_bytes() == (b / "splits.csv").read_bytes()
    assert (a / "samples.csv").read_bytes() == (b / "samples.csv").read_bytes()
