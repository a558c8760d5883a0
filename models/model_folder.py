"""The model folder, torch-free: where its files are, their integrity check, and its JSON metadata.

A model folder (``<run>/model/`` or any folder a user was given) holds ``model.pt`` (the weights:
a state dict of tensors, read by :mod:`models.checkpoint` with ``weights_only=True``),
``model.json`` (model name, parameters, input shape, normalisation, training record) and
``manifest.json`` (the SHA-256 of both). Everything that needs only the metadata (the evaluate
stage, ``pipeline score --model``'s config) reads it here without importing torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.core import artifacts, io
from pipeline.core.errors import StageError
from pipeline.core.schema import Config

FORMAT = {"format": "medanomaly model folder", "version": 2}


class ModelFileError(StageError):
    """A model file that is missing, altered, corrupt, not ours, or carries objects that are not allowed."""


def folder_of(path: Path) -> Path:
    """The model folder of ``path`` (the folder itself, or the folder holding a ``model.pt``)."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def model_folder(cfg: Config, run_dir: Path) -> Path:
    """The model folder to score with: ``score.model`` (a model folder, or its ``model.pt``) or this run's own."""
    if cfg.score.model is None:
        return artifacts.model_dir(run_dir)
    return folder_of(cfg.score.model)


def manifest_entry(paths: list[Path]) -> dict:
    """The content of a model folder's ``manifest.json`` for its files ``paths``."""
    return {**FORMAT, "files": {p.name: io.sha256_file(p) for p in paths}}


def verify(folder: Path) -> None:
    """Check ``model.pt`` and ``model.json`` against the folder's ``manifest.json``."""
    mpath = artifacts.model_file("model_manifest", folder)
    if not mpath.is_file():
        raise ModelFileError(f"{folder}: no {mpath.name}; the model folder is incomplete (copy the whole folder)")
    try:
        files = json.loads(mpath.read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ModelFileError(f"{mpath}: not a model-folder manifest") from None
    for name in (artifacts.MODEL_FILES["weights"].pattern, artifacts.MODEL_FILES["meta"].pattern):
        p = folder / name
        if not p.is_file():
            raise ModelFileError(f"{p}: missing from the model folder")
        if io.sha256_file(p) != files.get(name):
            raise ModelFileError(f"{p}: its SHA-256 does not match {mpath.name}; the file was changed or damaged after training")


def is_legacy(folder: Path) -> bool:
    """A model folder of the first format: one pickled ``model.pt`` and no ``model.json``."""
    return artifacts.model_file("weights", folder).exists() and not artifacts.model_file("meta", folder).exists()


def read_meta(path: Path) -> dict:
    """``model.json`` of a model folder, verified against its manifest (no torch archive is read)."""
    folder = folder_of(path)
    weights = artifacts.model_file("weights", folder)
    if not weights.exists():
        raise ModelFileError(f"{weights}: model checkpoint not found (run the train stage first, or give a model folder)")
    if is_legacy(folder):
        from models.checkpoint import read_checkpoint  # a legacy folder's metadata sits inside its torch archive

        return {k: v for k, v in read_checkpoint(folder).items() if k != "state_dict"}
    verify(folder)
    meta_path = artifacts.model_file("meta", folder)
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise ModelFileError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not {"model_name", "params", "normalisation"} <= set(meta):
        raise ModelFileError(f"{meta_path}: not the metadata of a medanomaly model (model_name, params, normalisation)")
    return meta


def read_normalisation(path: Path) -> dict:
    """The intensity normalisation a checkpoint was trained with (no model is built)."""
    return read_meta(path)["normalisation"]
