"""``run.engine: ray`` on a local Ray instance gives the same outputs as the local process pool.

The test starts Ray itself (``ray.init`` on loopback, 2 CPUs, no dashboard) and batch-scores new
data twice with the same trained model: once with the local engine (2 worker processes, in a
subprocess like a user) and once in this process with ``run.engine: ray`` (ingest and extract as
Ray tasks, scoring through Ray Data ``map_batches`` with one model per actor). The input holds a
good series, a series with a missing slice and a file that is not DICOM, so per-item errors go
through both engines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE_CT, run_cli

from pipeline.core.artifacts import read_raw_cubes
from preprocessing.dicom_copy import copy_series

CONFIG = str(ROOT / "configs" / "ct_nodules_vae.yaml")
SERIES = SAMPLE_CT / "LIDC-IDRI-0063"
NODULES = SAMPLE_CT / "nodules.csv"


def test_engine_ray_without_ray_is_one_clear_error(tmp_path):
    """With Ray not importable, ``engine: ray`` is one error line naming the extra, no traceback."""
    fake = tmp_path / "fake" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\")\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake")}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "validate", CONFIG, "--set", "run.engine=ray"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "pip install medanomaly[ray]" in lines[0], proc.stderr


@pytest.fixture(scope="module")
def new_data(tmp_path_factory):
    """The sample series, a copy of it with new UIDs and a missing slice, and a non-DICOM file."""
    root = tmp_path_factory.mktemp("new_data")
    shutil.copytree(SERIES, root / "good")
    copy_series(SERIES, root / "missing_slice", drop=[15])
    (root / "notes.txt").write_text("not a DICOM file\n")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder as the train stage writes it, with untrained weights (equality needs no training)."""
    import torch
    from conftest import load_config

    from models.checkpoint import MODEL_FILE, save_checkpoint
    from models.zoo import build

    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    model = build(cfg.model.name, cfg.model, 1, cfg.train.patch_size)
    out = tmp_path_factory.mktemp("train") / "model"
    norm = {"hu_window": list(cfg.extract.hu_window), "mode": cfg.extract.normalise, "cube_size": cfg.extract.cube_size}
    save_checkpoint(out / MODEL_FILE, model, norm, {"epoch": 0, "val_loss": 0.0, "seed": 0, "config": cfg.to_dict()})
    return out


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install medanomaly[ray]); the Ray engine test needs it", exc_type=ImportError)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
    print(f"ray.init: {time.perf_counter() - t0:.1f} s")
    yield
    ray.shutdown()


def test_ray_engine_matches_local_engine(local_ray, new_data, model_dir, tmp_path):
    from pipeline.cli import main

    args = ["score", "--model", str(model_dir), "--input", str(new_data), "--nodules", str(NODULES), "--set", "score.mc_samples=8",
            "--set", "extract.background.enabled=true", "--set", "evaluate.bootstrap=50", "--set", "run.workers=2", "--set", "run.threads=1"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    proc = run_cli(*args, "--out", str(local))
    assert proc.returncode == 1, proc.stderr  # item errors, the rest scored
    t0 = time.perf_counter()
    assert main([*args, "--out", str(remote), "--set", "run.engine=ray"]) == 1
    print(f"ray engine run: {time.perf_counter() - t0:.1f} s")

    for table in ("errors.csv", "ignored.csv"):
        pd.testing.assert_frame_equal(*(pd.read_csv(d / table).sort_values("item").reset_index(drop=True) for d in (local, remote)))
    errors, ignored = pd.read_csv(local / "errors.csv"), pd.read_csv(local / "ignored.csv")
    assert len(errors) == 1 and errors["error"].str.contains("missing slice").any(), errors  # the series with a missing slice
    assert len(ignored) == 1 and ignored["item"].str.contains("notes.txt").any(), ignored  # a text file is left out, not an error

    for name in ("series.csv", "samples.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(local / name), pd.read_csv(remote / name))
    for vol in (local / "volumes").glob("*.nii.gz"):
        assert vol.read_bytes() == (remote / "volumes" / vol.name).read_bytes(), vol.name
    (ids_a, raw_a), (ids_b, raw_b) = read_raw_cubes(local), read_raw_cubes(remote)
    assert np.array_equal(raw_a, raw_b) and np.array_equal(ids_a, ids_b)
    assert sorted(p.name for p in (local / "cubes").iterdir()) == sorted(p.name for p in (remote / "cubes").iterdir())
    sl, sr = pd.read_csv(local / "scores.csv"), pd.read_csv(remote / "scores.csv")
    assert len(sl) > 100 and list(sl.columns) == list(sr.columns)
    # the two engines batch the cubes differently, so kernels sum in a different order: the pinned-output tolerance
    pd.testing.assert_frame_equal(sl, sr, check_exact=False, rtol=1e-4)
    with np.load(local / "residuals.npz") as a, np.load(remote / "residuals.npz") as b:
        assert np.allclose(a["residual"], b["residual"], atol=1e-3)
