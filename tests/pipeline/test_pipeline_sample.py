"""End-to-end runs of ``pipeline run`` on the bundled real sample (LIDC-IDRI-0063 crop)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import ROOT, SAMPLE_CT, run_cli
from pydicom.uid import generate_uid

CONFIG = str(ROOT / "configs" / "ct_nodules_vae.yaml")
FAST = ["--set", "train.epochs=3", "--set", "score.mc_samples=8", "--set", "evaluate.bootstrap=200"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("run")
    proc = run_cli("run", CONFIG, "--out", str(out), *FAST)
    return out, proc


def test_demo_writes_every_output(demo_run):
    out, proc = demo_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for rel in ("manifest.json", "errors.csv", "series.csv", "samples.csv", "splits.csv", "model/model.pt",
                "model/curves.csv", "model/curves.png", "scores.csv", "residuals.npz", "metrics.json", "roc.png", "score_density.png",
                "candidates.csv", "candidates.mrk.json", "map_metrics.json", "map_calibration.json"):
        assert (out / rel).is_file(), rel
    series = pd.read_csv(out / "series.csv", dtype=str)
    assert len(series) == 1
    assert [p.name for p in (out / "cubes").iterdir()] == [f"{series['series_uid'][0]}.npy"]  # one cube shard per series
    uid = series.series_uid[0]
    ct = nib.load(out / "volumes" / f"{uid}.nii.gz")
    assert np.allclose(ct.header.get_zooms(), 1.0)
    for kind in ("residual", "score", "anomaly", "anomaly_p"):  # the cube overlays and the whole-scan maps
        ov = nib.load(out / "overlays" / f"{uid}_{kind}.nii.gz")
        assert ov.shape == ct.shape
        assert np.array_equal(ov.affine, ct.affine), kind  # exactly the same grid
    res = np.asarray(nib.load(out / "overlays" / f"{uid}_residual.nii.gz").dataobj)
    assert res.max() > 0

    metrics = json.loads((out / "metrics.json").read_text())
    prim = metrics["primary"]
    assert metrics["primary_score"] == "elbo"
    assert prim["n_anomalous"] == 2 and prim["n_normal"] > 10
    lo, hi = prim["auroc_ci"]
    assert 0 <= lo <= prim["auroc"] <= hi <= 1

    scores = pd.read_csv(out / "scores.csv")
    for col in ("elbo", "iwae", "recon", "kl"):
        assert np.isfinite(scores[col]).all()
    assert np.allclose(scores.elbo, scores.recon + scores.kl, rtol=1e-4)
    # nodules are test-only; training uses normals only
    splits = pd.read_csv(out / "splits.csv")
    assert set(splits.loc[splits.label == 1, "split"]) == {"test"}
    assert (splits.loc[splits.split == "train", "label"] == 0).all()

    manifest = json.loads((out / "manifest.json").read_text())
    for stage in ("ingest", "extract", "split", "train", "score", "evaluate"):
        st = manifest["stages"][stage]
        assert st["status"] == "done" and st["wall_time_s"] >= 0 and st["outputs"]
    assert manifest["versions"]["monai"] != "not installed"
    assert "input" in manifest["config"]["ingest"]


def test_rerun_skips_finished_stages(demo_run):
    out, _ = demo_run
    before = json.loads((out / "manifest.json").read_text())["stages"]
    proc = run_cli("run", CONFIG, "--out", str(out), *FAST)
    assert proc.returncode == 0, proc.stderr
    for stage in ("ingest", "extract", "split", "train", "score", "evaluate"):
        assert f"[{stage}] up to date, skipped" in proc.stderr
        assert "running" not in [line for line in proc.stderr.splitlines() if line.startswith(f"[{stage}]")]
    after = json.loads((out / "manifest.json").read_text())["stages"]
    assert {n: st["finished"] for n, st in after.items()} == {n: st["finished"] for n, st in before.items()}  # nothing re-ran
    # a changed evaluate setting re-runs only evaluate
    proc = run_cli("run", CONFIG, "--out", str(out), *FAST, "--set", "evaluate.ci=0.9")
    assert "[score] up to date, skipped" in proc.stderr and "[evaluate] running" in proc.stderr
    assert json.loads((out / "metrics.json").read_text())["primary"]["ci_level"] == 0.9
    # the primary score is calibrated in the score stage, so changing it re-runs score and evaluate
    proc = run_cli("run", CONFIG, "--out", str(out), *FAST, "--set", "evaluate.ci=0.9", "--set", "evaluate.score=recon")
    assert "[train] up to date, skipped" in proc.stderr and "[score] running" in proc.stderr
    assert json.loads((out / "metrics.json").read_text())["primary_score"] == "recon"
    assert json.loads((out / "calibration.json").read_text())["score"] == "recon"
    scores = pd.read_csv(out / "scores.csv")
    assert scores.p_value.between(0, 1).all() and scores.flagged.dtype == bool


def _copy_series(src: Path, dst: Path, drop: set[str] = frozenset()) -> None:
    """Copy a series under a new SeriesInstanceUID, optionally dropping slices (a real 'gap')."""
    dst.mkdir(parents=True)
    uid = generate_uid()
    for f in sorted(src.glob("*.dcm")):
        if f.name in drop:
            continue
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / f.name)


def test_bad_inputs_give_one_error_each_and_good_series_finish(tmp_path):
    src = SAMPLE_CT / "LIDC-IDRI-0063"
    data = tmp_path / "dicom"
    shutil.copytree(src, data / "good")
    files = sorted(src.glob("*.dcm"))
    _copy_series(src, data / "gappy", drop={files[len(files) // 2].name})
    corrupt = data / "corrupt" / "broken.dcm"
    corrupt.parent.mkdir()
    corrupt.write_bytes(files[0].read_bytes()[:3000])  # truncated mid-header
    cfg = tmp_path / "cfg.yaml"
    text = (ROOT / "configs" / "ct_nodules_vae.yaml").read_text()
    text = text.replace("../sample_data/ct/LIDC-IDRI-0063", str(data)).replace("../sample_data/ct/nodules.csv", str(SAMPLE_CT / "nodules.csv"))
    cfg.write_text(text)
    out = tmp_path / "run"
    proc = run_cli("ingest", str(cfg), "--out", str(out))
    assert proc.returncode == 1, proc.stderr  # item errors → exit code 1, the stage still finished
    assert "Traceback" not in proc.stderr
    errors = pd.read_csv(out / "errors.csv")
    assert len(errors) == 2, errors
    msgs = " | ".join(errors.error)
    assert "broken.dcm" in msgs
    assert "missing slice" in msgs
    series = pd.read_csv(out / "series.csv")
    assert len(series) == 1  # the good series


def test_config_error_is_one_line_without_traceback(tmp_path):
    proc = run_cli("validate", CONFIG, "--set", "train.epoch=5")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "train.epoch" in proc.stderr and "epochs" in proc.stderr


def test_bundled_config_name_resolves(tmp_path):
    proc = run_cli("validate", "ct_nodules_vae.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "using bundled config" in proc.stderr


@pytest.mark.slow
def test_kill_during_training_then_resume(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "pipeline.cli", "run", CONFIG, "--out", str(out), "--set", "train.epochs=12", "--set", "train.patience=100",
            "--set", "score.mc_samples=4", "--set", "evaluate.bootstrap=50"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = out / "model" / "train_state.pt"
    deadline = time.time() + 300  # a generous bound for a stuck run, not a timing assumption
    while time.time() < deadline and not state.exists() and proc.poll() is None:
        time.sleep(0.01)
    assert state.exists(), "training never started"
    proc.send_signal(signal.SIGKILL)  # at once: the first epoch's state is written, 11 epochs are left
    proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == "running"
    done_before = len(pd.read_csv(out / "model" / "curves.csv"))
    assert 0 < done_before < 12
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    for stage in ("ingest", "extract", "split"):
        assert f"[{stage}] up to date, skipped" in res.stderr
    curves = pd.read_csv(out / "model" / "curves.csv")
    assert list(curves.epoch) == list(range(12))  # resumed, not restarted, and finished
    assert not state.exists()


def test_score_new_data_with_only_the_model_folder(demo_run, tmp_path):
    """`pipeline score --model DIR --input DICOM --nodules CSV` reproduces the run's nodule scores."""
    out, _ = demo_run
    new = tmp_path / "new"
    proc = run_cli("score", "--model", str(out / "model"), "--input", str(SAMPLE_CT / "LIDC-IDRI-0063"),
                   "--nodules", str(SAMPLE_CT / "nodules.csv"), "--out", str(new), "--set", "score.mc_samples=8", "--set", "evaluate.bootstrap=0")
    assert "Traceback" not in proc.stderr
    scores = pd.read_csv(new / "scores.csv")
    assert list(scores.kind) == ["nodule", "nodule"]  # no background sampling for new data
    original = pd.read_csv(out / "scores.csv").set_index("sample_id")
    for _, row in scores.iterrows():
        assert np.isclose(row.elbo, original.loc[row.sample_id, "elbo"], rtol=1e-5)
        # the stored calibration of the model's run is used: same p-values and flags
        assert np.isclose(row.p_value, original.loc[row.sample_id, "p_value"], rtol=1e-5)
        assert row.flagged == original.loc[row.sample_id, "flagged"]
    uid = pd.read_csv(new / "series.csv").series_uid[0]
    assert (new / "overlays" / f"{uid}_residual.nii.gz").is_file()


def test_compare_runs_writes_table_and_roc(demo_run, tmp_path):
    out, _ = demo_run
    proc = run_cli("compare", str(out), str(out), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(table) == 2 and table.model.tolist() == ["vae3d", "vae3d"]
    assert np.allclose(table.auroc, metrics["primary"]["auroc"])
    assert (tmp_path / "cmp" / "roc_compare.png").stat().st_size > 1000


def test_validate_reports_missing_input_paths(tmp_path):
    proc = run_cli("validate", CONFIG, "--set", "ingest.input=/no/such/folder", "--set", "extract.nodules=/no/such.csv")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "ingest.input: /no/such/folder does not exist" in proc.stderr
    assert "extract.nodules: /no/such.csv does not exist" in proc.stderr


def test_unwritable_run_directory_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run directory should go")
    proc = run_cli("run", CONFIG, "--out", str(blocker / "run"), *FAST)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
