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
