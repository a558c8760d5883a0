"""SIGKILL at random points in every stage, resume, and get byte-identical outputs.

An uninterrupted ``pipeline run`` is the reference. A second run directory is killed (SIGKILL)
at a random moment after each stage in turn has started (ingest twice, extract, split, train
twice, score, evaluate), each time resuming with the same command, and finally runs to the end.
Compared: every file of the run directory except ``manifest.json`` byte for byte (volumes,
cubes, tables, model, curves, scores, residuals, metrics, figures, overlays, report, per-series
ingest records, errors.csv), and the manifest without its clock fields
(:func:`pipeline.core.manifest.stable_view`). The kill delays come from ``KILL_SEED`` (default 7).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE_CT
from corpus import copy_series, sample_files

from pipeline.core.io import sha256_file
from pipeline.core.manifest import stable_view

ARGS = ["--set", "train.epochs=6", "--set", "train.patience=100", "--set", "score.mc_samples=8", "--set", "evaluate.bootstrap=100",
        "--set", "extract.background.max_per_series=60", "--set", "run.threads=1"]
# (stage to wait for, the random delay after it started as a fraction of that stage's wall time in
# the reference run: from the machine's own speed, so a fast or a loaded machine both land inside)
PLAN = [("ingest", 0.5), ("ingest", 0.9), ("extract", 0.9), ("split", 0.9), ("train", 0.4), ("train", 0.5), ("score", 0.9), ("evaluate", 0.9)]
ORDER = ["ingest", "extract", "split", "train", "score", "evaluate"]


def _cmd(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--out", str(out), *ARGS]


def _manifest(out: Path) -> dict:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _running(out: Path) -> str | None:
    return next((n for n, st in _manifest(out).get("stages", {}).items() if st.get("status") == "running"), None)


def _files(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): sha256_file(p) for p in sorted(run.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def kill_at(cmd: list[str], out: Path, stage: str, max_delay: float, rng: random.Random, log: list[str]) -> str | None:
    """Start the run, wait until ``stage`` is running, SIGKILL after a random delay (s); returns the
    interrupted stage. If a later stage starts first (``stage`` was finished by an earlier attempt),
    the kill lands there instead."""
    before = {n: st.get("started") for n, st in _manifest(out).get("stages", {}).items()}  # a killed stage stays "running"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    wanted = ORDER[ORDER.index(stage):]
    while proc.poll() is None and time.time() < deadline:
        stages = _manifest(out).get("stages", {})
        if any(stages.get(n, {}).get("status") == "running" and stages[n].get("started") != before.get(n) for n in wanted):
            break  # started by this process
        time.sleep(0.005)
    delay = rng.uniform(0, max_delay)
    time.sleep(delay)
    if proc.poll() is not None:
        log.append(f"{stage}+{delay:.2f}s: run had already finished")
        return None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    hit = _running(out)
    leftovers = [p.name for p in out.rglob("*") if ".tmp" in p.name]
    log.append(f"waited for {stage}, killed {delay:.2f}s later, during {hit}; temp files left: {len(leftovers)}")
    return hit


@pytest.mark.slow
def test_sigkill_in_every_stage_then_resume_gives_identical_outputs(tmp_path):
    data = tmp_path / "dicom"
    files = sample_files()
    for f in files:  # the sample and a copy under new UIDs: ingest has two items to resume between
        (data / "a").mkdir(parents=True, exist_ok=True)
        (data / "a" / f.name).write_bytes(f.read_bytes())
    copy_series(files, data / "b")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text((ROOT / "configs" / "ct_nodules_vae.yaml").read_text()
                   .replace("../sample_data/ct/LIDC-IDRI-0063", str(data)).replace("../sample_data/ct/nodules.csv", str(SAMPLE_CT / "nodules.csv")))
    ref, killed = tmp_path / "reference" / "run", tmp_path / "killed" / "run"  # same folder name: the report names it
    proc = subprocess.run(_cmd(cfg, ref), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr

    seed = int(os.environ.get("KILL_SEED", "7"))
    rng, log = random.Random(seed), []
    wall = {name: st["wall_time_s"] for name, st in _manifest(ref)["stages"].items()}
    interrupted = [kill_at(_cmd(cfg, killed), killed, stage, frac * wall[stage], rng, log) for stage, frac in PLAN]
    final = subprocess.run(_cmd(cfg, killed), cwd=ROOT, capture_output=True, text=True, timeout=900)
    print(f"KILL_SEED={seed}\n" + "\n".join(log))
    assert final.returncode == 0, final.stderr
    assert len({s for s in interrupted if s}) >= 4, log  # really interrupted inside most stages

    got, want = _files(killed), _files(ref)
    assert sorted(got) == sorted(want)  # no temporary or partial file left, nothing missing
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, differ
    a, b = _manifest(killed), _manifest(ref)
    assert stable_view(a["stages"]) == stable_view(b["stages"])
    assert a["versions"] == b["versions"] and a["config"] == b["config"]
