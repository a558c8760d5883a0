"""``pipeline bench``: protocol planning, shared data stages, resumption and the published tables.

Uses a tiny synthetic array dataset and the closed-form baselines (seconds), so it tests the
machinery, not detection quality (that is what the benchmark itself measures, on real data).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, load_config

from evaluation.bench_report import write_markdown
from pipeline.bench import plan, run_bench, variant
from pipeline.core.errors import ConfigError


def _data(path, n: int = 80, size: int = 12, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 4 == 0).astype(int)
    images = rng.normal(100, 10, (n, size, size))
    images[labels == 1, 3:8, 3:8] += 80  # anomalies carry a bright square
    np.savez(path, images=np.clip(images, 0, 255).astype(np.uint8), labels=labels, patient=np.array([f"p{i // 2}" for i in range(n)]))


def _protocol(tmp_path, **bench) -> object:
    _data(tmp_path / "data" / "toy.npz") if (tmp_path / "data").mkdir(exist_ok=True) is None else None
    cfg = {
        "bench": {"protocol": "Toy", "description": "squares vs noise", "selection": "none needed", "data": {"ingest.input": "toy.npz"},
                  "repeat": "seeds", "repeats": 2,
                  "detectors": [{"label": "PCA", "set": {"model.name": "pca2d", "model.n_components": 4}},
                                {"label": "mean intensity", "set": {"model.name": "intensity2d", "model.distance": "upper"}, "quick": False}],
                  "references": [{"detector": "PCA", "score": "pca_recon", "auroc": 0.7, "source": "made up for the test"}],
                  "quick": {"split.val_fraction": 0.25}, **bench},
        "run": {"seed": 0, "threads": 1},
        "ingest": {"format": "arrays", "input": "does/not/exist.npz", "arrays": {"patient_id": "patient"}},
        "extract": {"cube_size": 12, "hu_window": [0, 255]},
        "split": {"method": "holdout", "test_fraction": 0.3, "val_fraction": 0.2},
        "model": {"name": "vae2d", "channels": [4, 8], "strides": [2, 2]},
        "train": {"patch_size": 8, "epochs": 1},
        "score": {"splits": ["val", "test"], "mc_samples": 2},
        "evaluate": {"score": "elbo", "bootstrap": 50},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_variant_layers_detector_quick_repeat_and_a_new_model_section(tmp_path):
    path = _protocol(tmp_path)
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    out = variant(raw, cfg.bench.detectors[0], cfg.bench, quick=True, repeat=1, sweep=None)
    assert out["model"] == {"name": "pca2d", "n_components": 4}  # the VAE's parameters do not leak into PCA
    assert out["run"]["seed"] == 1 and out["split"]["val_fraction"] == 0.25 and out["evaluate"]["overlays"] is False
    assert "bench" not in out


def test_plan_validates_every_detector_before_running(tmp_path):
    path = _protocol(tmp_path, detectors=[{"label": "bad", "set": {"model.name": "pca2d", "model.n_component": 3}}])
    with pytest.raises(ConfigError, match=r"detector 'bad'.*n_component: unknown key \(did you mean 'n_components'\?\)"):
        plan(path, tmp_path / "data", tmp_path / "runs", quick=False)


def test_plan_folds_and_sweep(tmp_path):
    path = _protocol(tmp_path, repeat="folds", repeats=3, sweep_key="split.contamination", sweep_values=[0.0, 0.05])
    cfg, specs = plan(path, tmp_path / "data", tmp_path / "runs", quick=False)
    assert len(specs) == 2 * 3 * 2
    assert {(s.raw["split"]["method"], s.raw["split"]["fold"]) for s in specs} == {("kfold", 0), ("kfold", 1), ("kfold", 2)}
    assert {s.raw["split"]["contamination"] for s in specs} == {0.0, 0.05}
    assert all(s.raw["ingest"]["input"] == str((tmp_path / "data" / "toy.npz").resolve()) for s in specs)
    # one data directory per (sweep value, fold), shared by both detectors
    assert len({s.data_dir for s in specs}) == 6 and len({s.run_dir for s in specs}) == 12


def test_bench_runs_publishes_and_resumes(tmp_path):
    path = _protocol(tmp_path)
    out, runs = tmp_path / "docs", tmp_path / "runs"
    md = run_bench([path], tmp_path / "data", out, runs, quick=False, jobs=0, only=None)
    text = md.read_text()
    assert "## Toy" in text and "| PCA | pca_recon |" in text and "| mean intensity | intensity |" in text
    assert "0.70 (made up for the test)" in text
    assert (out / "bench" / "toy_roc.png").stat().st_size > 1000 and (out / "bench" / "toy_density.png").stat().st_size > 1000
    doc = json.loads((out / "bench" / "toy.json").read_text())
    assert doc["commit"] and "run_bench" not in doc["command"]
    row = next(r for r in doc["rows"] if r["detector"] == "mean intensity" and r["score"] == "intensity")
    # the published AUROCs are those of the runs' own metrics.json
    per_run = [json.loads((runs / "toy" / "mean_intensity" / f"seed{k}" / "metrics.json").read_text())["scores"]["intensity"]["auroc"]
               for k in range(2)]
    assert row["auroc_each"] == [round(a, 4) for a in per_run]
    assert row["auroc_mean"] == pytest.approx(np.mean(per_run))
    assert row["auroc_mean"] > 0.9  # a bright square is exactly what a mean-intensity score sees
    # model size and scoring throughput stand beside the AUROC: samples of all scored splits per second of the score stage
    assert "| params | train s | score s | scored/s | peak MB |" in text
    man = json.loads((runs / "toy" / "mean_intensity" / "seed0" / "manifest.json").read_text())["stages"]["score"]
    assert man["counts"]["scored"] > 0 and row["scored_per_s"] > 0
    # data stages were shared: the second detector's cubes are the first detector's file
    a = next((runs / "toy" / "_data" / "seed1" / "cubes").glob("*.npy"))
    b = runs / "toy" / "mean_intensity" / "seed1" / "cubes" / a.name
    assert os.stat(a).st_ino == os.stat(b).st_ino
    m = json.loads((b.parent.parent / "manifest.json").read_text())
    assert "last_skipped" in m["stages"]["extract"]
    # a second run resumes: every stage of every run is skipped
    run_bench([path], tmp_path / "data", out, runs, quick=False, jobs=0, only=None)
    m2 = json.loads((runs / "toy" / "pca" / "seed0" / "manifest.json").read_text())
    assert all("last_skipped" in m2["stages"][s] for s in ("train", "score", "evaluate"))
    # peak memory comes from the runs' manifests, so the resumed publication keeps the training figures
    doc2 = json.loads((out / "bench" / "toy.json").read_text())
    peaks = [max(json.loads((runs / "toy" / "pca" / f"seed{k}" / "manifest.json").read_text())["stages"][s]["peak_rss_mb"]
                 for s in ("train", "score", "evaluate")) for k in range(2)]
    row2 = next(r for r in doc2["rows"] if r["detector"] == "PCA" and r["score"] == "pca_recon")
    assert row2["peak_rss_mb"] == pytest.approx(max(peaks))
    assert row2["peak_rss_mb"] == next(r for r in doc["rows"] if r["detector"] == "PCA" and r["score"] == "pca_recon")["peak_rss_mb"]


def test_only_reruns_its_detector_and_keeps_the_others_published_rows(tmp_path):
    path = _protocol(tmp_path, repeats=1)
    out = tmp_path / "docs"
    run_bench([path], tmp_path / "data", out, tmp_path / "runs", quick=False, jobs=0, only=None)
    first = json.loads((out / "bench" / "toy.json").read_text())
    # rerun PCA alone in fresh run directories (another machine, the old runs gone): the intensity rows stay, marked as carried
    md = run_bench([path], tmp_path / "data", out, tmp_path / "runs2", quick=False, jobs=0, only=["PCA"]).read_text()
    doc = json.loads((out / "bench" / "toy.json").read_text())
    old = [r for r in first["rows"] if r["detector"] == "mean intensity"]
    assert old and [r for r in doc["rows"] if r["detector"] == "mean intensity"] == old
    assert [r["detector"] for r in doc["rows"]][0] == "PCA"  # the config's order, not the order of running
    assert {r["detector"] for r in doc["curves"]} == {"PCA", "mean intensity"}
    assert [c["detector"] for c in doc["carried"]] == ["mean intensity"] and doc["carried"][0]["commit"] == first["commit"]
    assert "| mean intensity | intensity |" in md and "Rows of **mean intensity** carried over from" in md
    # a run of every detector carries nothing over
    run_bench([path], tmp_path / "data", out, tmp_path / "runs2", quick=False, jobs=0, only=None)
    assert "carried" not in json.loads((out / "bench" / "toy.json").read_text())


def test_quick_mode_drops_detectors_marked_not_quick(tmp_path):
    path = _protocol(tmp_path)
    cfg, specs = plan(path, tmp_path / "data", tmp_path / "runs", quick=True)
    assert {s.detector for s in specs} == {"PCA"} and len(specs) == 1


def test_views_restrict_classes(tmp_path):
    path = _protocol(tmp_path, views=[{"label": "class 0 vs 1 only", "normal_classes": [0], "anomaly_classes": [1]}])
    md = run_bench([path], tmp_path / "data", tmp_path / "docs", tmp_path / "runs", quick=True, jobs=1, only=None).read_text()
    assert "### View: class 0 vs 1 only" in md
    doc = json.loads((tmp_path / "docs" / "bench" / "toy.json").read_text())
    assert doc["rows"][0]["peak_rss_mb"] > 100  # the detector's own process (torch and MONAI alone take more)
    scores = pd.read_csv(tmp_path / "runs" / "toy" / "pca" / "seed0" / "scores.csv")
    assert set(scores["split"]) == {"val", "test"}  # score.splits: train samples were not scored


def test_a_failing_run_is_reported_and_the_others_are_published(tmp_path):
    path = _protocol(tmp_path, repeats=1, detectors=[
        {"label": "PCA", "set": {"model.name": "pca2d", "model.n_components": 4}},
        {"label": "broken", "set": {"model.name": "pca2d", "split.contamination": 0.9}}])  # needs more anomalies than exist
    md = run_bench([path], tmp_path / "data", tmp_path / "docs", tmp_path / "runs", quick=False, jobs=0, only=None).read_text()
    assert "| PCA | pca_recon |" in md
    assert "**Failed run** (left out of the table): broken, repeat 0: StageError: split.contamination=0.9" in md


def test_sweep_publishes_the_change_against_zero_with_the_seed_figure(tmp_path):
    path = _protocol(tmp_path, repeats=1, sweep_key="split.contamination", sweep_values=[0.0, 0.1],
                     detectors=[{"label": "PCA", "set": {"model.name": "pca2d", "model.n_components": 4}}],
                     references=[{"detector": "PCA", "score": "pca_recon", "auroc": -0.01, "source": "a seed figure"}])
    md = run_bench([path], tmp_path / "data", tmp_path / "docs", tmp_path / "runs", quick=False, jobs=0, only=None).read_text()
    doc = json.loads((tmp_path / "docs" / "bench" / "toy.json").read_text())
    a0, a1 = (next(r["auroc_mean"] for r in doc["rows"] if r["score"] == "pca_recon" and r["sweep"] == v) for v in (0.0, 0.1))
    assert f"| PCA | pca_recon | {a0:.3f} | {a1 - a0:+.3f} | -0.01 (a seed figure) |" in md
    # a result file whose sweep values were stored as strings (numpy floats through json's default=str) renders the same
    for r in doc["rows"]:
        r["sweep"] = str(r["sweep"])
    (tmp_path / "docs" / "bench" / "toy.json").write_text(json.dumps(doc))
    assert f"| PCA | pca_recon | {a0:.3f} | {a1 - a0:+.3f} | -0.01 (a seed figure) |" in write_markdown(tmp_path / "docs").read_text()
    splits = pd.read_csv(tmp_path / "runs" / "toy" / "pca" / "contamination_0.1" / "seed0" / "splits.csv")
    train = splits[splits.split == "train"]
    assert (train.label == 1).sum() == round(0.1 * (train.label == 0).sum() / 0.9)  # the training set really is contaminated


def test_protocols_share_one_queue_and_bad_data_skips_only_its_protocol(tmp_path, capsys):
    """With jobs ≥ 1 every protocol is planned first and all detectors share one pool: a protocol
    whose data stages fail is reported and skipped, the others are published."""
    good = _protocol(tmp_path, repeats=1)
    bad = tmp_path / "bad.yaml"
    raw = yaml.safe_load(good.read_text())
    raw["bench"].update(protocol="Missing data", data={"ingest.input": "nowhere.npz"})
    bad.write_text(yaml.safe_dump(raw))
    md = run_bench([bad, good], tmp_path / "data", tmp_path / "docs", tmp_path / "runs", quick=False, jobs=2, only=None).read_text()
    assert "## Toy" in md and "| PCA | pca_recon |" in md and "Missing data" not in md
    err = capsys.readouterr().err
    assert "[bench] Missing data: data stages failed, protocol skipped:" in err and "nowhere.npz" in err
    assert "[bench] Toy done in" in err


def test_a_shared_data_folder_from_before_sharding_is_extracted_again(tmp_path):
    """A ``_data`` folder written by a version without cube shards still matches its fingerprints;
    a detector added later must not fail on it: its data stages are redone."""
    from pipeline.core import io
    from pipeline.core.manifest import Manifest

    path = _protocol(tmp_path, repeats=1, detectors=[{"label": "PCA", "set": {"model.name": "pca2d", "model.n_components": 4}}])
    run_bench([path], tmp_path / "data", tmp_path / "docs", tmp_path / "runs", quick=False, jobs=0, only=None)
    data = tmp_path / "runs" / "toy" / "_data" / "seed0"
    samples = pd.read_csv(data / "samples.csv").drop(columns=["shard", "shard_row"])  # as the old extract wrote it
    samples.to_csv(data / "samples.csv", index=False)
    man = Manifest(data)
    man.stages["extract"]["outputs"]["samples.csv"] = io.sha256_file(data / "samples.csv")
    man.save()
    raw = yaml.safe_load(path.read_text())
    raw["bench"]["detectors"].append({"label": "mean intensity", "set": {"model.name": "intensity2d", "model.distance": "upper"}})
    path.write_text(yaml.safe_dump(raw))
    md = run_bench([path], tmp_path / "data", tmp_path / "docs", tmp_path / "runs", quick=False, jobs=0, only=None).read_text()
    assert "| mean intensity | intensity |" in md and "Failed run" not in md
    assert {"shard", "shard_row"} <= set(pd.read_csv(data / "samples.csv").columns)


def test_the_commit_mark_counts_code_changes_not_the_published_docs(tmp_path):
    import subprocess

    from evaluation.bench_report import code_changed

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "BENCHMARKS.md").write_text("old table\n")
    (tmp_path / "model.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert not code_changed(tmp_path)
    (tmp_path / "docs" / "BENCHMARKS.md").write_text("new table\n")
    assert not code_changed(tmp_path)
    (tmp_path / "model.py").write_text("x = 2\n")
    assert code_changed(tmp_path)


PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
sys.path.insert(0, sys.argv[1])
from pipeline.bench import exit_with_parent

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=exit_with_parent, initargs=(os.getpid(), 0.1))
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 600)  # a long run in the worker
    time.sleep(600)
"""


def test_a_killed_bench_does_not_leave_its_workers_running(tmp_path):
    """The worker initializer ends a pool worker once its parent is gone (a SIGKILLed ``pipeline bench``)."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 60  # generous: the worker polls every 0.1 s
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.2)
        assert not _alive(worker), f"worker {worker} still running after its parent was killed"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:  # a zombie (exited, not yet reaped) counts as gone
            return fh.read().split(") ")[-1][0] != "Z"
    except OSError:  # no /proc (not Linux): the signal check above is all there is
        return not Path("/proc").is_dir()
