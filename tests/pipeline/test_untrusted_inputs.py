"""Untrusted inputs: names from data cannot write outside the run folder, model files cannot run
code, one process per run folder, config model switching from the command line."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from conftest import ROOT, SAMPLE_CT, run_cli, validate
from corpus import copy_series, sample_files
from PIL import Image

from models.checkpoint import read_checkpoint, save_checkpoint, write_torch
from models.model_folder import ModelFileError, read_meta
from models.zoo import build
from pipeline.core import artifacts, io
from pipeline.core.errors import InvalidSeriesError
from pipeline.core.lock import RunLockedError, run_lock, unlock
from preprocessing.dicom_series import SeriesInfo, check_size
from preprocessing.labels import leaves_folder
from preprocessing.nifti import write_nifti

CONFIG = str(ROOT / "configs" / "ct_nodules_vae.yaml")
FAST = ["--set", "train.epochs=1", "--set", "score.mc_samples=2", "--set", "evaluate.bootstrap=20", "--set", "evaluate.figures=false"]


def one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------ names from data


def test_series_stem_keeps_valid_uids_and_hashes_the_rest():
    assert artifacts.series_stem("1.2.840.113619.2.55.3") == "1.2.840.113619.2.55.3"
    for bad in ("../../../../tmp/escape", "/etc/passwd", "1.2..3", "1.02.3", "a.b", "1." * 40 + "1", "", "..", "1.2/3"):
        stem = artifacts.series_stem(bad)
        assert stem.startswith("series-") and len(stem) == 23 and "/" not in stem and stem == artifacts.series_stem(bad)
    assert artifacts.series_stem("../a") != artifacts.series_stem("../b")


def test_artifact_paths_from_data_stay_inside_the_root(tmp_path):
    assert artifacts.path("volume", tmp_path, series="../../x").parent == tmp_path / "volumes"
    png = artifacts.path("overlay_png", tmp_path, tag="top", rank="01", sample="../../../etc/passwd")
    assert png.parent == tmp_path / "overlays" and ".." not in png.name
    (tmp_path / "out").mkdir()
    os.symlink("/tmp", tmp_path / "escape")
    with pytest.raises(Exception, match="outside"):
        artifacts.inside(tmp_path, "escape/x")


def test_a_path_like_series_uid_is_ingested_inside_the_run_folder(tmp_path):
    bad_uid = "../../../../tmp/escape_" + str(os.getpid())
    data = tmp_path / "data"
    copy_series(sample_files(), data / "s", edit=lambda ds, k: setattr(ds, "SeriesInstanceUID", bad_uid))
    out = tmp_path / "a" / "b" / "run"
    proc = run_cli("ingest", CONFIG, "--out", str(out), "--set", f"ingest.input={data}")
    assert proc.returncode == 0, proc.stderr
    series = pd.read_csv(out / "series.csv", dtype=str)
    assert series["series_uid"].tolist() == [bad_uid]  # the original UID is kept
    stem = artifacts.series_stem(bad_uid)
    assert series["volume"].tolist() == [f"volumes/{stem}.nii.gz"] and (out / "volumes" / f"{stem}.nii.gz").is_file()
    assert (out / "ingest" / "done" / f"{stem}.json").is_file()
    assert not Path(f"/tmp/escape_{os.getpid()}.nii.gz").exists() and not list(Path("/tmp").glob(f"escape_{os.getpid()}*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "data"] and sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]


WRITERS = {
    "bytes": lambda p: io.write_bytes(p, b"x"),
    "text": lambda p: io.write_text(p, "x"),
    "json": lambda p: io.write_json(p, {"a": 1}),
    "csv": lambda p: io.write_csv(p, pd.DataFrame({"a": [1]})),
    "npz": lambda p: io.write_npz(p, a=np.zeros(2)),
    "with": lambda p: io.write_with(p, lambda tmp: tmp.write_bytes(b"x")),
    "nifti": lambda p: write_nifti(p, __import__("SimpleITK").Image(2, 2, 2, __import__("SimpleITK").sitkInt16)),
    "torch": lambda p: write_torch(p, {"w": torch.zeros(1)}),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_refuses_a_path_outside_the_run_folder(tmp_path, writer):
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(tmp_path, run / "link")  # a folder inside the run that points out of it
    with io.confine(run):
        for dest in (run / ".." / "out.bin", tmp_path / "elsewhere" / "out.bin", run / "link" / "out.bin", Path("/tmp") / f"x{os.getpid()}.bin"):
            with pytest.raises(io.OutsideRunError, match="outside the run folder"):
                WRITERS[writer](dest)
        WRITERS[writer](run / "sub" / "fine.bin")  # inside: written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and (run / "sub" / "fine.bin").is_file()
    assert not Path(f"/tmp/x{os.getpid()}.bin").exists()


def test_labels_csv_names_outside_the_image_folder_are_refused(tmp_path):
    assert leaves_folder("../x.png") and leaves_folder("/etc/passwd") and leaves_folder("a/../../x") and not leaves_folder("a/../b.png")
    img = tmp_path / "img"
    img.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((20, 20), 7, np.uint8)).save(img / name)
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(tmp_path / "secret.png")
    pd.DataFrame({"image": ["a.png", "b.png", "../secret.png", str(tmp_path / "secret.png")],
                  "label": ["n", "n", "n", "n"]}).to_csv(img / "labels.csv", index=False)
    cfg = validate({"ingest": {"format": "images", "input": str(img), "images": {"normal_classes": ["n"]}},
                    "extract": {"cube_size": 8, "normalise": "minmax"}, "train": {"patch_size": 8}, "model": {"name": "pca2d"}}, base_dir=tmp_path)
    from preprocessing.images import ingest

    res = ingest(cfg, tmp_path / "run")
    errors = dict(res.errors)
    assert res.counts["images"] == 2 and "points outside the image folder" in errors["image ../secret.png"]
    assert "points outside the image folder" in errors[f"image {tmp_path / 'secret.png'}"]


def test_declared_size_above_max_voxels_is_refused_before_reading(tmp_path):
    hdr = pydicom.dcmread(sample_files()[0], stop_before_pixels=True)
    from preprocessing.dicom_series import read_header

    h = read_header(sample_files()[0])
    info = SeriesInfo(h.series_uid, h.study_uid, h.patient_id, "CT", [h] * 100, 2.5, h.pixel_spacing, int(hdr.Rows), int(hdr.Columns))
    check_size(info, 1.0, 2**30)  # the real geometry fits
    with pytest.raises(InvalidSeriesError, match="exceeds ingest.max_voxels 1,000,000; not read"):
        check_size(info, 1.0, 10**6)
    huge = SeriesInfo(h.series_uid, h.study_uid, h.patient_id, "CT", [h] * 2, 1e6, (1e6, 1e6), 512, 512)  # 10⁶ mm pixels
    with pytest.raises(InvalidSeriesError, match="at 1 mm"):
        check_size(huge, 1.0, 2**30)


def test_huge_declared_rows_and_columns_fail_before_any_pixel_is_read(tmp_path):
    data = tmp_path / "data"

    def huge(ds, k):
        ds.Rows, ds.Columns = 60000, 60000
        ds.PixelData = b"\0" * (60000 * 60000 * 2 // 4096)  # far less than declared; the header alone is checked

    copy_series(sample_files()[:3], data / "s", edit=huge)
    proc = run_cli("ingest", CONFIG, "--out", str(tmp_path / "run"), "--set", f"ingest.input={data}", "--set", "ingest.min_slices=2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = pd.read_csv(tmp_path / "run" / "errors.csv")
    files = errors[errors["item"].str.endswith(".dcm")]
    assert len(files) == 3 and files["error"].str.contains("truncated file").all()


# ------------------------------------------------------------------------------------ model files


def _model_folder(folder: Path) -> Path:
    raw = {"model": {"name": "vae3d", "latent_dim": 4, "channels": [4, 8], "strides": [2, 2]}, "run": {"device": "cpu"}}
    cfg = validate(raw, base_dir=folder)
    model = build("vae3d", cfg.model, 1, 28)
    save_checkpoint(folder / "model.pt", model, {"hu_window": [-1000.0, 400.0], "mode": "window", "cube_size": 32},
                    {"seed": 0, "config": cfg.to_dict()})
    return folder


class Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_model_files_round_trip_with_a_verified_manifest(tmp_path):
    folder = _model_folder(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.json", "model.pt"]
    payload = read_checkpoint(folder)
    assert payload["model_name"] == "vae3d" and all(isinstance(v, torch.Tensor) for v in payload["state_dict"].values())
    assert read_meta(folder)["normalisation"]["mode"] == "window"
    data = bytearray((folder / "model.pt").read_bytes())
    data[-40] ^= 0xFF
    (folder / "model.pt").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256 does not match manifest.json"):
        read_checkpoint(folder)


@pytest.mark.parametrize("form", ["legacy", "with_manifest"])
def test_a_hostile_pickle_never_runs_and_is_one_error_line(tmp_path, form):
    marker = tmp_path / "pwned"
    folder = tmp_path / "model"
    if form == "legacy":  # a single model.pt, as the first format
        folder.mkdir()
        (folder / "model.pt").write_bytes(pickle.dumps({"model_name": "vae3d", "state_dict": Hostile(marker)}))
    else:  # a complete folder whose weights were swapped, manifest recomputed by the attacker
        _model_folder(folder)
        buf = __import__("io").BytesIO()
        torch.save({"net.w": Hostile(marker)}, buf)
        (folder / "model.pt").write_bytes(buf.getvalue())
        from models.model_folder import manifest_entry

        io.write_json(folder / "manifest.json", manifest_entry([folder / "model.pt", folder / "model.json"]))
    proc = run_cli("score", "--model", str(folder), "--input", str(SAMPLE_CT / "LIDC-IDRI-0063"), "--nodules", str(SAMPLE_CT / "nodules.csv"),
                   "--out", str(tmp_path / "scored"))
    one_error_line(proc, "model.pt", "refused")
    assert not marker.exists()


def test_not_a_model_file_and_a_corrupt_one_are_one_error_line_each(tmp_path):
    for name, content in (("text", b"just text, not a model"), ("zip", b"PK\x03\x04" + os.urandom(200))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.pt").write_bytes(content)
        proc = run_cli("score", "--model", str(folder), "--input", str(SAMPLE_CT / "LIDC-IDRI-0063"), "--out", str(tmp_path / f"s_{name}"))
        one_error_line(proc, str(folder / "model.pt"))


def test_a_legacy_model_folder_loads_and_converts(tmp_path):
    new = _model_folder(tmp_path / "new")
    payload = read_checkpoint(new)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(payload, legacy / "model.pt")  # the first format: everything in one archive
    assert read_meta(legacy)["model_name"] == "vae3d"
    proc = run_cli("convert-model", str(legacy))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in legacy.iterdir()) == ["manifest.json", "model.json", "model.pt"]
    converted = read_checkpoint(legacy)
    assert all(torch.equal(converted["state_dict"][k], v) for k, v in payload["state_dict"].items())


# ------------------------------------------------------------------------------------ one run per folder


def _holder(run: Path) -> subprocess.Popen:
    code = ("import sys, time; from pathlib import Path; from pipeline.core.lock import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_the_same_folder_refuses_and_a_killed_holder_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        proc = run_cli("run", CONFIG, "--out", str(run), *FAST)
        one_error_line(proc, f"run folder {run} is in use by PID {holder.pid}", "since")
        unlocked = run_cli("unlock", str(run))
        one_error_line(unlocked, "in use by", "not removed")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    proc = run_cli("ingest", CONFIG, "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    assert f"taking over a stale lock of {run}: PID {holder.pid}" in proc.stderr and "is no longer running" in proc.stderr
    assert not (run / "run.lock").exists()


def test_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path):
    run = tmp_path / "run"
    with run_lock(run), run_lock(run):
        assert (run / "run.lock").exists()
        code = "import sys; from pathlib import Path; from pipeline.core.lock import run_lock\nwith run_lock(Path(sys.argv[1])): pass"
        other = subprocess.run([sys.executable, "-c", code, str(run)], cwd=ROOT, capture_output=True, text=True)
        assert other.returncode == 1 and "RunLockedError" in other.stderr and f"PID {os.getpid()}" in other.stderr
    assert not (run / "run.lock").exists()
    (run / "run.lock").write_text('{"pid": 1, "host": "another-host", "started": "x"}')
    with pytest.raises(RunLockedError, match="another machine"):
        with run_lock(run):
            pass
    assert "removed the lock" in unlock(run) and not (run / "run.lock").exists()


def test_two_concurrent_runs_second_refuses(tmp_path):
    """Two `pipeline run` started together on one folder: exactly one runs, the other exits 2 naming
    it. Either may win the lock (no sleep orders them): the check holds for both outcomes."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipeline.cli", "run", CONFIG, "--out", str(run), *FAST, "--set", "run.threads=1"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [(p, *p.communicate(timeout=900)) for p in procs]
    winners = [d for d in done if d[0].returncode == 0]
    losers = [d for d in done if d[0].returncode != 0]
    assert len(winners) == 1 and len(losers) == 1, [(d[0].returncode, d[2][-500:]) for d in done]
    loser = subprocess.CompletedProcess(cmd, losers[0][0].returncode, losers[0][1], losers[0][2])
    one_error_line(loser, "is in use by PID", str(winners[0][0].pid))


# ------------------------------------------------------------------------------------ switching the model


def test_switching_the_model_on_the_command_line_drops_the_other_models_keys(tmp_path):
    proc = run_cli("validate", str(ROOT / "configs" / "xray.yaml"), "--set", "model.name=joint2d")
    assert proc.returncode == 0, proc.stderr
    assert "note: model.name=joint2d: dropped the file's model key(s) num_res_units (vae2d parameters that joint2d does not have)" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "xray.yaml").read_text().replace("  num_res_units: 0", "  num_res_unitz: 0")
                   .replace("../sample_data", str(ROOT / "sample_data")))
    proc = run_cli("validate", str(bad), "--set", "model.name=joint2d")
    one_error_line(proc, "model.num_res_unitz: unknown key")


def test_a_run_that_finds_the_lock_just_taken_still_names_its_holder(tmp_path):
    """The holder writes its record just after taking the lock; a process refused in that instant waits for
    the record instead of naming "PID ?" (seen once in CI: two runs started together)."""
    import fcntl
    import json
    import os
    import threading

    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken, not yet written
    writer = threading.Timer(0.3, lambda: os.pwrite(fd, json.dumps({"pid": 4242, "host": "h", "started": "now"}).encode(), 0))
    writer.start()
    try:
        with pytest.raises(RunLockedError, match="in use by PID 4242"):
            with run_lock(run):
                pass
    finally:
        writer.join()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
