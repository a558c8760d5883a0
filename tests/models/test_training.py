"""The generic training loop: divergence handling, model selection on normal validation data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from conftest import validate

from models.checkpoint import load_checkpoint
from models.training import fit
from models.zoo import build


def _cfg(tmp_path, epochs=6):
    return validate({"model": {"name": "vae3d", "latent_dim": 4, "channels": [4, 8], "strides": [2, 2]},
                     "train": {"epochs": epochs, "batch_size": 4, "patch_size": 28, "patience": 100}}, base_dir=tmp_path)


def test_non_finite_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    model = build("vae3d", cfg.model, 1, 28)
    calls = {"n": 0}
    original = model.training_step

    def flaky(x, opts, mgn):
        calls["n"] += 1
        out = original(x, opts, mgn)
        if calls["n"] > 4:  # epoch 2 onwards (2 batches per epoch)
            out["loss"] = float("nan")
        return out

    monkeypatch.setattr(model, "training_step", flaky)
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 32, 32, 32), dtype=np.float32)
    summary = fit(model, x, x[:4], cfg, tmp_path, {"hu_window": [0, 1], "mode": "window"})
    assert summary["diverged"] and "non-finite" in summary["stop_reason"]
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert list(curves.epoch) == [0, 1]  # the diverged epoch is not recorded as a good one
    _, payload = load_checkpoint(tmp_path / "model.pt")
    assert payload["epoch"] in (0, 1) and np.isfinite(payload["val_loss"])
    assert not (tmp_path / "train_state.pt").exists()


def test_best_checkpoint_is_selected_on_validation_loss(tmp_path):
    cfg = _cfg(tmp_path, epochs=5)
    torch.manual_seed(0)
    model = build("vae3d", cfg.model, 1, 28)
    x = np.random.default_rng(1).random((8, 1, 32, 32, 32), dtype=np.float32)
    summary = fit(model, x, x[:4], cfg, tmp_path, {"hu_window": [0, 1], "mode": "window"})
    curves = pd.read_csv(tmp_path / "curves.csv")
    best = int(curves.val_loss.idxmin())
    _, payload = load_checkpoint(tmp_path / "model.pt")
    assert payload["epoch"] == curves.epoch[best] == summary["best_epoch"]
