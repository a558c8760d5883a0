"""Model folder: what ``pipeline score --model DIR`` needs, in a form that cannot run code.

A model folder (``<run>/model/`` or any folder a user was given) holds:

- ``model.pt``: the detector's ``state_dict`` only (tensors), loaded with
  ``torch.load(weights_only=True)``, so a file that carries any other object (a pickle that would
  call ``os.system``) is refused by torch's restricted unpickler before anything runs;
- ``model.json``: the registry name, parameters, input channels and patch size, the intensity
  normalisation, and what training recorded (selection epoch, seed, the training config);
- ``manifest.json``: the SHA-256 of both files, checked before either is used.

Any problem (a missing or altered file, a file that is not ours, a corrupt archive, forbidden
objects, an unknown model) is one :class:`ModelFileError` naming the file and what is wrong.

Older model folders held a single ``model.pt`` with everything pickled in one dict. They still
load, through the same restricted unpickler (their content is plain dicts, numbers, strings and
tensors), without the SHA-256 check; ``pipeline convert-model DIR`` rewrites one in this format.
"""

from __future__ import annotations

import dataclasses
import io as _io
import pickle
from pathlib import Path
from typing import Any

import torch

from models.detector import Detector
from models.model_folder import ModelFileError, folder_of, is_legacy, manifest_entry, read_meta
from models.zoo import DETECTORS, build
from pipeline.core import artifacts, io
from pipeline.core.errors import StageError
from pipeline.core.validation import build as build_dataclass
from pipeline.core.validation import to_plain

MODEL_DIR = artifacts.ARTIFACTS["model_dir"].pattern
MODEL_FILE = artifacts.MODEL_FILES["weights"].pattern
MODEL_KEYS = ("model_name", "params", "in_channels", "patch_size", "normalisation", "state_dict")  # what save_checkpoint writes itself


def device_for(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("run.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def write_torch(dest: str | Path, obj: Any) -> None:
    """``torch.save`` serialised in memory first: the archive's bytes do not depend on the file name."""
    buf = _io.BytesIO()
    torch.save(obj, buf)
    io.write_bytes(dest, buf.getvalue())


def save_checkpoint(path: Path, model: Detector, normalisation: dict, extra: dict) -> None:
    """Write ``model.pt`` (weights), ``model.json`` (``MODEL_KEYS`` but the weights, plus ``extra``) and ``manifest.json``."""
    folder = Path(path).parent
    meta = {"model_name": model.registry_name, "params": to_plain(model.params), "in_channels": model.in_channels,
            "patch_size": model.patch_size, "normalisation": normalisation, **to_plain(extra)}
    weights = artifacts.model_file("weights", folder)
    write_torch(weights, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    meta_path = artifacts.model_file("meta", folder)
    io.write_json(meta_path, meta)
    io.write_json(artifacts.model_file("model_manifest", folder), manifest_entry([weights, meta_path]))


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: refused: the file carries objects that are not allowed in a model file ({first[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError, IndexError) as exc:
        raise ModelFileError(f"{path}: not a readable model file (corrupt or not a torch archive: {type(exc).__name__}: {str(exc)[:200]})") from None


def read_checkpoint(path: Path) -> dict:
    """The checkpoint as one dict: ``model.json``'s entries plus ``state_dict`` (verified), or a legacy file's dict."""
    folder = folder_of(path)
    weights = artifacts.model_file("weights", folder)
    if is_legacy(folder):
        return _read_legacy(weights)
    meta = read_meta(folder)
    state = _torch_load(weights)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{weights}: model.pt must hold a state dict of tensors")
    return {**meta, "state_dict": state}


def _read_legacy(weights: Path) -> dict:
    payload = _torch_load(weights)
    if not isinstance(payload, dict) or not {"model_name", "state_dict"} <= set(payload):
        raise ModelFileError(f"{weights}: not a medanomaly model file (no model name and weights; trained by another tool?)")
    return payload


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[Detector, dict]:
    """Rebuild the detector from a model folder (or its ``model.pt``); returns ``(model in eval mode, payload)``."""
    payload = read_checkpoint(path)
    name = payload.get("model_name")
    if name not in DETECTORS:
        raise ModelFileError(f"{path}: checkpoint is for model {name!r}, which is not registered in this version")
    params_cls = DETECTORS[name].Params
    known = {f.name for f in dataclasses.fields(params_cls)}
    errors: list[str] = []
    params = build_dataclass(params_cls, {k: v for k, v in dict(payload.get("params") or {}).items() if k in known}, "model.", Path("."), errors)
    if errors or params is None:
        raise ModelFileError(f"{path}: stored model parameters are invalid: {'; '.join(errors)}")
    try:
        model = build(name, params, int(payload["in_channels"]), int(payload["patch_size"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: the weights do not fit model {name} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return model.to(device).eval(), payload


def convert_legacy(folder: Path) -> Path:
    """Rewrite a legacy single-file model folder in the current format (weights, model.json, manifest)."""
    if not is_legacy(folder_of(folder)):
        return folder_of(folder)
    payload = read_checkpoint(folder)
    model, _ = load_checkpoint(folder)
    extra = {k: v for k, v in payload.items() if k not in MODEL_KEYS}
    with io.confine(folder_of(folder)):
        save_checkpoint(artifacts.model_file("weights", folder_of(folder)), model, payload["normalisation"], extra)
    return folder_of(folder)
