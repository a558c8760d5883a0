"""Model folder: a checkpoint that carries everything needed to score new data.

``model/model.pt`` holds the registry name, the validated model parameters, input channels and
patch size, the intensity normalisation, the seed and the weights. ``pipeline score --model DIR``
needs nothing else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from models.registry import MODELS, Detector, build
from pipeline import io
from pipeline.config import to_plain
from pipeline.errors import StageError

MODEL_DIR = "model"
MODEL_FILE = "model.pt"


def device_for(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("run.device: cuda requested but no CUDA device is available")
    return torch.device(name)


MODEL_KEYS = ("model_name", "params", "in_channels", "patch_size", "normalisation", "state_dict")  # what save_checkpoint writes itself


def save_checkpoint(path: Path, model: Detector, normalisation: dict, extra: dict) -> None:
    """Write the model (``MODEL_KEYS``) and ``extra`` (selection epoch, config, ...) as one torch archive."""
    payload = {
        "model_name": model.registry_name,
        "params": to_plain(model.params),
        "in_channels": model.in_channels,
        "patch_size": model.patch_size,
        "normalisation": normalisation,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    io.write_torch(path, payload)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[Detector, dict]:
    """Rebuild the detector from a checkpoint; returns ``(model in eval mode, payload)``."""
    if not path.exists():
        raise StageError(f"{path}: model checkpoint not found (run the train stage first)")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    name = payload["model_name"]
    if name not in MODELS:
        raise StageError(f"{path}: checkpoint is for model {name!r}, which is not registered in this version")
    params_cls = MODELS[name].Params
    known = {f.name for f in dataclasses.fields(params_cls)}
    params = params_cls(**{k: v for k, v in payload["params"].items() if k in known})
    model = build(name, params, payload["in_channels"], payload["patch_size"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload


def read_normalisation(path: Path) -> dict:
    """The intensity normalisation a checkpoint was trained with (no model is built)."""
    if not path.exists():
        raise StageError(f"{path}: model checkpoint not found (run the train stage first)")
    return torch.load(path, map_location="cpu", weights_only=False)["normalisation"]
