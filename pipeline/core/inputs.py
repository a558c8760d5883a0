"""External inputs: the files and folders outside the run directory that a config reads.

Each input is named by its config key. Stages list the keys they read (``Stage.inputs``); this
module resolves a key to a path for a config (``None`` when that config does not use it, e.g. a
nodule table for an array dataset) and digests it for the stage fingerprint:

- a folder tree, or a single data file given as ``ingest.input``: relative paths, sizes and
  modification times (cheap for archives of any size; a changed file reruns the stage);
- a table or model file: its content hash (SHA-256).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.core import artifacts, io
from pipeline.core.errors import ConfigError
from pipeline.core.schema import Config


@dataclass(frozen=True)
class ExternalInput:
    key: str
    path: Callable[[Config], Path | None]
    by_content: bool


def _labels(cfg: Config) -> Path | None:
    """The labels CSV of an image folder; none when the classes come from the folder names (``labels_from: folders``)."""
    if cfg.ingest.format != "images" or cfg.ingest.images.labels_from != "csv":
        return None
    return cfg.ingest.images.labels or Path(cfg.ingest.input) / "labels.csv"


def _model(cfg: Config) -> Path | None:
    """A model folder's manifest (it holds the SHA-256 of the weights and metadata), or a legacy folder's ``model.pt``."""
    m = cfg.score.model
    if m is None:
        return None
    folder = m if m.is_dir() else m.parent
    manifest = artifacts.model_file("model_manifest", folder)
    return manifest if manifest.exists() else artifacts.model_file("weights", folder)


INPUTS: dict[str, ExternalInput] = {i.key: i for i in (
    ExternalInput("ingest.input", lambda cfg: cfg.ingest.input, by_content=False),
    ExternalInput("ingest.images.labels", _labels, by_content=True),
    ExternalInput("extract.nodules", lambda cfg: cfg.extract.nodules if cfg.ingest.format == "dicom" else None, by_content=True),
    ExternalInput("score.model", _model, by_content=True),
)}


def input_paths(cfg: Config, keys: tuple[str, ...] | list[str] | None = None) -> list[tuple[str, Path]]:
    """``(config key, path)`` of the external inputs ``keys`` (default: all) that ``cfg`` uses."""
    out = []
    for key in (INPUTS if keys is None else keys):
        p = INPUTS[key].path(cfg)
        if p is not None:
            out.append((key, p))
    return out


def check_inputs(source: Path | str, cfg: Config, keys: tuple[str, ...] | list[str] | None = None) -> None:
    """One :class:`ConfigError` listing every missing input path (before any stage starts)."""
    missing = [f"{key}: {p} does not exist" for key, p in input_paths(cfg, keys) if not p.exists()]
    if missing:
        raise ConfigError(f"{source}: " + ("invalid config:\n  " + "\n  ".join(missing) if len(missing) > 1 else missing[0]))


def tree_digest(root: Path) -> str:
    """Digest of a folder tree (or of one file) from relative paths, sizes and mtimes (cheap for large archives)."""
    if root.is_file():  # e.g. an .npz array dataset: os.walk would see nothing and miss a changed file
        st = root.stat()
        return io.sha256_json([(root.name, st.st_size, st.st_mtime_ns)])
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:  # a dangling link: ingest reports it; digest the link itself
                st = p.lstat()
            entries.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return io.sha256_json(entries)


def external_inputs(cfg: Config, keys: tuple[str, ...]) -> dict[str, str]:
    """``{path: digest}`` of the inputs ``keys`` that ``cfg`` uses (``missing`` for an absent path)."""
    out = {}
    for key, p in input_paths(cfg, keys):
        if not p.exists():
            out[str(p)] = "missing"
        elif INPUTS[key].by_content and p.is_file():
            out[str(p)] = io.sha256_file(p)
        else:
            out[str(p)] = tree_digest(p)
    return out
