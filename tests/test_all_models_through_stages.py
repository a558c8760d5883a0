"""Every registered model trains from config and scores through the same stages, in 2D and 3D.

Uses small synthetic array datasets (the CT path is covered by test_pipeline_sample.py): normal
images are smooth blobs, anomalies carry a bright square, so the data have the shapes and value
ranges of real inputs. This is a contract test (the stages run and write every score), not a
test of detection quality.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import validate

from models.zoo import MODELS
from pipeline.runner import STAGE_NAMES, run_stages


def _dataset(path, dims: int, channels: int, n: int = 36, size: int = 28, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * dims, indexing="ij"))
    images, labels = [], []
    for i in range(n):
        c = rng.uniform(-0.3, 0.3, dims)
        img = 200 * np.exp(-((grid - c.reshape(-1, *[1] * dims)) ** 2).sum(0) / 0.3)
        label = int(i % 4 == 0)
        if label:
            img[tuple(slice(4, 10) for _ in range(dims))] = 255
        images.append(np.repeat(img[None], channels, 0))
        labels.append(label)
    np.savez(path, images=np.clip(np.stack(images), 0, 255).astype(np.uint8), labels=np.array(labels),
             patient=np.array([f"p{i // 2}" for i in range(n)]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_runs_through_train_score_evaluate(tmp_path, name):
    dims = 2 if name.endswith("2d") else 3
    channels = 3 if dims == 2 else 1
    data = tmp_path / "data.npz"
    _dataset(data, dims, channels)
    raw = {
        "run": {"seed": 0, "threads": 2},
        "ingest": {"format": "arrays", "input": str(data),
                   "arrays": {"images": "images", "labels": "labels", "patient_id": "patient", "spatial_dims": dims}},
        "extract": {"cube_size": 28, "hu_window": [0, 255]},
        "split": {"method": "holdout", "test_fraction": 0.34, "val_fraction": 0.25},
        "model": {"name": name},
        "train": {"epochs": 1, "batch_size": 8, "patch_size": 28},
        "score": {"mc_samples": 2, "batch_size": 8},
        "evaluate": {"score": MODELS[name].score_names[0], "bootstrap": 20},
    }
    cfg = validate(raw, base_dir=tmp_path)
    run_dir = tmp_path / "run"
    manifest = run_stages(cfg, run_dir, list(STAGE_NAMES), log=lambda m: None)
    assert all(manifest.stages[s]["status"] == "done" for s in STAGE_NAMES)
    scores = pd.read_csv(run_dir / "scores.csv")
    for col in MODELS[name].score_names:
        assert col in scores.columns, col
        assert np.isfinite(scores[col]).all(), col
    with np.load(run_dir / "residuals.npz") as z:
        assert z["residual"].shape == (len(scores), channels, *[28] * dims)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "auroc" in metrics["primary"]
