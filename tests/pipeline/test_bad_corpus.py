"""The corpus of bad inputs (``tests/corpus.py``, built from real files) through ``pipeline run``.

One run over the whole DICOM corpus and its nodule table: every bad file, series and nodule gets
exactly one one-line error naming it and its defect; the good series and nodules come out as
they do from a clean run; the exit code is 1; stderr has no traceback. Whole-run failures (a
config or table that cannot be used, an empty input, a read-only or full output file system)
exit with 2 and one ``error:`` line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE_CT, run_cli
from corpus import build_corpus

from pipeline.core.artifacts import read_raw_cubes

FAST = ["--set", "train.epochs=1", "--set", "score.mc_samples=2", "--set", "evaluate.bootstrap=20",
        "--set", "extract.background.max_per_series=40", "--set", "run.threads=1"]


def ct_config(tmp: Path, dicom: Path, nodules: Path, name: str = "cfg.yaml") -> Path:
    text = (ROOT / "configs" / "ct_nodules_vae.yaml").read_text()
    cfg = tmp / name
    cfg.write_text(text.replace("../sample_data/ct/LIDC-IDRI-0063", str(dicom)).replace("../sample_data/ct/nodules.csv", str(nodules)))
    return cfg


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one ``error:`` line, containing every fragment."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    cases = build_corpus(tmp / "corpus")
    out = tmp / "run"
    proc = run_cli("run", str(ct_config(tmp, tmp / "corpus" / "dicom", tmp / "corpus" / "nodules.csv")), "--out", str(out), *FAST)
    return cases, out, proc


def test_corpus_run_finishes_with_exit_code_1_and_no_traceback(corpus_run):
    _, out, proc = corpus_run
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "item error(s); see" in proc.stderr.splitlines()[-1]
    assert (out / "metrics.json").is_file() and (out / "report.html").is_file()


def test_the_map_evaluates_only_nodules_inside_their_volume(corpus_run):
    _, out, _ = corpus_run
    mapped = {n["nodule_id"] for n in json.loads((out / "map_metrics.json").read_text())["nodules"]}
    assert "outside" not in mapped and mapped, mapped  # a nodule 40 mm above the top slice is not a missed detection


def test_every_bad_item_has_exactly_one_clear_error(corpus_run):
    cases, out, _ = corpus_run
    errors = pd.read_csv(out / "errors.csv", dtype=str)
    bad = [c for c in cases["dicom"] + cases["nodules"] if c.stage]
    assert sorted(errors["item"]) == sorted(c.item for c in bad), errors  # nothing missing, nothing extra
    for c in bad:
        row = errors[errors["item"] == c.item]
        assert len(row) == 1, c.name
        stage, msg = row.iloc[0]["stage"], row.iloc[0]["error"]
        assert stage == c.stage, (c.name, stage)
        assert c.message in msg, (c.name, msg)
        assert "\n" not in msg and "Traceback" not in msg
        named = c.item.split(" ", 1)[1] if c.item.startswith(("series ", "nodule ")) else c.item
        assert named in msg, (c.name, msg)  # names the file, series or nodule


def test_files_that_are_not_images_and_nodules_of_other_scans_are_one_note_each(corpus_run):
    """An XML file and an RT Plan: listed once in ignored.csv and summed up in one note, not errors;
    nodules of scans that are not in the input: one note with their count."""
    cases, out, proc = corpus_run
    ignored = pd.read_csv(out / "ignored.csv", dtype=str)
    want = sorted(c.item for c in cases["dicom"] if c.outcome.startswith("ignored"))
    assert sorted(ignored["item"]) == want and set(ignored["stage"]) == {"ingest"}
    assert ignored.loc[ignored["item"].str.endswith("annotations.xml"), "reason"].str.endswith("an XML file, not an image").all()
    assert ignored.loc[ignored["item"].str.endswith("rtplan.dcm"), "reason"].str.endswith("a DICOM RT Plan Storage object, not an image").all()
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note: ")]
    assert sum(f"{len(want)} file(s) under" in n and "are not images" in n for n in notes) == 1, notes
    assert sum("2 nodule(s) of" in n and "2 scan(s) not among the ingested series" in n for n in notes) == 1, notes


def test_good_series_and_nodules_match_a_clean_run(corpus_run, tmp_path):
    cases, out, _ = corpus_run
    good_uids = sorted(c.item.split(" ", 1)[1] for c in cases["dicom"] if not c.stage and c.item.startswith("series "))
    series = pd.read_csv(out / "series.csv", dtype=str)
    assert sorted(series["series_uid"]) == good_uids  # both series of the mixed folder, nothing else
    # the sample alone, ingested and extracted without any bad neighbour
    clean = tmp_path / "clean"
    cfg = str(ct_config(tmp_path, SAMPLE_CT / "LIDC-IDRI-0063", SAMPLE_CT / "nodules.csv"))
    for stage in ("ingest", "extract"):
        proc = run_cli(stage, cfg, "--out", str(clean), *FAST)
        assert proc.returncode == 0, proc.stderr
    uid = pd.read_csv(clean / "series.csv", dtype=str)["series_uid"][0]
    volume = f"volumes/{uid}.nii.gz"
    assert (out / volume).read_bytes() == (clean / volume).read_bytes()
    copy_uid = next(u for u in good_uids if u != uid)  # same pixels and geometry under a new UID
    a, b = (np.asarray(nib.load(out / f"volumes/{u}.nii.gz").dataobj) for u in (uid, copy_uid))
    assert np.array_equal(a, b)
    samples = pd.read_csv(out / "samples.csv", dtype={"nodule_id": str}).set_index("sample_id")
    reference = pd.read_csv(clean / "samples.csv", dtype={"nodule_id": str}).set_index("sample_id")
    nodules = reference[reference.kind == "nodule"].index
    assert len(nodules) == 2
    pd.testing.assert_frame_equal(samples.loc[nodules], reference.loc[nodules])
    got, ref = (dict(zip(*read_raw_cubes(run))) for run in (out, clean))
    for s in nodules:
        assert np.array_equal(got[s], ref[s])
    edge = next(c.item for c in cases["nodules"] if c.name == "nodule at the volume edge")
    assert bool(samples.loc[edge, "padded"]) and not samples.loc[nodules, "padded"].any()
    assert np.any(got[edge] == -1024) and got[edge].shape == ref[nodules[0]].shape


def test_nan_and_inf_images_are_left_out_and_the_rest_run(tmp_path):
    cases = build_corpus(tmp_path / "corpus")["arrays"]
    out = tmp_path / "run"
    proc = run_cli("run", str(ROOT / "configs" / "pneumonia_vae2d.yaml"), "--out", str(out),
                   "--set", f"ingest.input={tmp_path / 'corpus' / 'arrays.npz'}",
                   "--set", "split.method=holdout", "--set", "extract.hu_window=[-1000,400]", "--set", "train.epochs=1",
                   "--set", "score.mc_samples=2", "--set", "evaluate.bootstrap=20", "--set", "run.threads=1")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = pd.read_csv(out / "errors.csv", dtype=str)
    assert sorted(errors["item"]) == sorted(c.item for c in cases)
    assert errors["error"].str.contains("contains NaN or inf").all()
    kept = pd.read_csv(out / "arrays.csv", dtype=str)["sample_id"]
    with np.load(tmp_path / "corpus" / "arrays.npz") as z:
        n = len(z["images"])
    assert len(kept) == n - 2 and not set(kept) & {c.item.split(" ")[1] for c in cases}
    assert np.isfinite(pd.read_csv(out / "scores.csv")["elbo"]).all()


# ------------------------------------------------------------------ whole-run failures (exit 2)


def test_nodule_table_with_wrong_columns(tmp_path):
    bad = tmp_path / "nodules.csv"
    pd.read_csv(SAMPLE_CT / "nodules.csv").rename(columns={"x_mm": "x", "y_mm": "y", "z_mm": "z"}).to_csv(bad, index=False)
    out = tmp_path / "run"
    proc = run_cli("run", str(ct_config(tmp_path, SAMPLE_CT / "LIDC-IDRI-0063", bad)), "--out", str(out), *FAST)
    assert_one_error_line(proc, str(bad), "missing column(s) x_mm, y_mm, z_mm")
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors["stage"]) == ["extract"] and "missing column" in errors["error"][0]
    assert (out / "series.csv").is_file()  # ingest finished and is kept


def test_config_with_a_path_that_does_not_exist(tmp_path):
    cfg = ct_config(tmp_path, tmp_path / "no_such_folder", SAMPLE_CT / "nodules.csv")
    proc = run_cli("run", str(cfg), "--out", str(tmp_path / "run"), *FAST)
    assert_one_error_line(proc, f"ingest.input: {tmp_path / 'no_such_folder'} does not exist")
    assert not (tmp_path / "run").exists()  # checked before any stage starts


def test_config_with_an_unknown_model_name(tmp_path):
    proc = run_cli("run", str(ROOT / "configs" / "ct_nodules_vae.yaml"), "--out", str(tmp_path / "run"), "--set", "model.name=vae9d")
    assert_one_error_line(proc, "model.name: unknown model 'vae9d'", "did you mean 'vae3d'")


def test_empty_input_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("run", str(ct_config(tmp_path, tmp_path / "empty", SAMPLE_CT / "nodules.csv")), "--out", str(tmp_path / "run"), *FAST)
    assert_one_error_line(proc, "holds no files", str(tmp_path / "empty"))


def test_folder_of_only_bad_files_lists_each_file(tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    (data / "zero.dcm").write_bytes(b"")
    (data / "notes.txt").write_text("not DICOM\n")
    proc = run_cli("run", str(ct_config(tmp_path, data, SAMPLE_CT / "nodules.csv")), "--out", str(tmp_path / "run"), *FAST)
    (data / "broken.dcm").write_text("named like DICOM, so it should be an image\n")
    proc = run_cli("run", str(ct_config(tmp_path, data, SAMPLE_CT / "nodules.csv")), "--out", str(tmp_path / "run"), *FAST)
    assert_one_error_line(proc, "no readable DICOM image series", "2 unreadable file(s)")
    errors = pd.read_csv(tmp_path / "run" / "errors.csv")
    assert set(errors["item"]) == {str(data / "zero.dcm"), str(data / "broken.dcm"), "ingest"}  # notes.txt is not an image


def test_folder_of_only_files_that_are_not_images(tmp_path):
    data = tmp_path / "xml"
    data.mkdir()
    (data / "boxes.xml").write_text("<annotation><object/></annotation>")
    proc = run_cli("run", str(ct_config(tmp_path, data, SAMPLE_CT / "nodules.csv")), "--out", str(tmp_path / "run"), *FAST)
    assert_one_error_line(proc, "holds no DICOM image: its 1 file(s) are not images", "boxes.xml: an XML file")


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """A size-limited (or read-only) tmpfs at ``path``; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}); needs root with CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _outputs_intact(out: Path) -> None:
    """No temporary file left, and every output the manifest records has its recorded hash."""
    import json

    from pipeline.core.io import sha256_file

    assert not [p for p in out.rglob("*") if ".tmp" in p.name], "temporary files left behind"
    for st in json.loads((out / "manifest.json").read_text())["stages"].values():
        if st["status"] == "done":
            for rel, digest in st["outputs"].items():
                assert sha256_file(out / rel) == digest, rel


def test_read_only_output_directory(tmp_path):
    cfg = str(ROOT / "configs" / "ct_nodules_vae.yaml")
    if os.geteuid() != 0:  # an ordinary user: permissions are enough
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        proc = run_cli("run", cfg, "--out", str(ro / "run"), *FAST)
        assert_one_error_line(proc, "Permission denied", "re-run to resume")
        return
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        proc = run_cli("run", cfg, "--out", str(ro / "run"), *FAST)
        assert_one_error_line(proc, "Read-only file system", str(ro / "run"), "re-run to resume")


def test_full_disk_stops_cleanly_and_resumes_after_space_is_freed(tmp_path):
    """A real size-limited file system: full while ingest writes its NIfTI (SimpleITK only prints
    'NWAD' and returns), then while extract writes a cube shard (Python's ENOSPC), then enough."""
    cfg = str(ROOT / "configs" / "ct_nodules_vae.yaml")
    with tmpfs(tmp_path / "disk", "3m") as disk:
        out = disk / "run"
        proc = run_cli("run", cfg, "--out", str(out), *FAST)
        assert_one_error_line(proc, "No space left on device", "finished work is kept")
        assert not list((out / "volumes").glob("*.nii.gz")) if (out / "volumes").exists() else True
        _outputs_intact(out)

        subprocess.run(["mount", "-o", "remount,size=7m", str(disk)], check=True)  # the 6 MB volume fits, not much more
        proc = run_cli("run", cfg, "--out", str(out), *FAST)
        line = assert_one_error_line(proc, "No space left on device", f"({out}/")  # names the output it could not write
        assert "[ingest] done" in proc.stderr
        _outputs_intact(out)
        failed = line.split(f"({out}/", 1)[1].split(")")[0]
        assert not (out / failed).exists()

        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        proc = run_cli("run", cfg, "--out", str(out), *FAST)
        assert proc.returncode == 0, proc.stderr
        assert "[ingest] up to date, skipped" in proc.stderr and "[evaluate] done" in proc.stderr
        _outputs_intact(out)
        shutil.rmtree(out)
