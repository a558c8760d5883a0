"""Config loading: YAML → validated :class:`~pipeline.core.schema.Config`, ``--set`` overrides, cross-checks.

A config is YAML (``yaml.safe_load``) validated against the dataclasses of
:mod:`pipeline.core.schema`. Every error names the file and the dotted key; an unknown key
suggests the nearest valid one. Relative paths are resolved against the config file's folder, so
a config works from any working directory.

The config knows nothing of models: the ``model`` section is validated against the parameter
class of the chosen model, looked up in the model catalog the caller hands in (``models``: a
mapping from model name to an entry with ``params`` (a dataclass) and ``scores`` (its score
names), :data:`models.catalog.MODELS`), so ``model: {name: vae3d, latnt_dim: 8}`` is caught too,
without importing torch.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Mapping, Protocol

import yaml

from pipeline.core.errors import ConfigError
from pipeline.core.ray_engine import require_ray
from pipeline.core.schema import Config, ImagesConfig
from pipeline.core.validation import build, suggest


class ModelEntry(Protocol):
    """What config validation needs to know of a model: its parameter class and score names."""

    params: type
    scores: tuple[str, ...]


Catalog = Mapping[str, ModelEntry]


def bundled_configs_dir() -> Path:
    """The repository's ``configs/`` folder (next to the installed ``pipeline`` package)."""
    return Path(__file__).resolve().parents[2] / "configs"


def resolve_config_path(name: str | Path) -> tuple[Path, bool]:
    """Find a config file: the path as given, else the bundled ``configs/`` file of that name.

    Returns ``(path, bundled)``; ``bundled`` tells the CLI to say which file it used.
    """
    p = Path(name)
    if p.is_file():
        return p.resolve(), False
    for cand in (bundled_configs_dir() / p.name, bundled_configs_dir() / f"{p.name}.yaml"):
        if cand.is_file():
            return cand.resolve(), True
    raise ConfigError(f"{name}: config file not found (looked here and in {bundled_configs_dir()})")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML so numbers and lists keep their type."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def set_dotted(raw: dict, keys: list[str], value: Any) -> None:
    """Set ``raw[k1][k2]...[kn] = value``, creating mappings on the way."""
    node = raw
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` overrides to the raw mapping (before validation, so they are checked too)."""
    for text in overrides:
        set_dotted(raw, *parse_override(text))
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None, *, models: Catalog) -> Config:
    """Load, override and validate a YAML config against the model catalog ``models``.

    Raises :class:`ConfigError` naming each problem. When an override switches ``model.name`` to
    another model, the file's model keys that the new model does not have are dropped (and an
    ``evaluate.score`` the new model does not compute is reset to its primary score); the config's
    ``notices`` say which. Unknown keys written in the file itself are still errors.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    raw, notices = apply_overrides_switching_model(raw, overrides or [], models)
    cfg = validate(raw, base_dir=path.resolve().parent, source=path.resolve(), models=models)
    cfg.notices = notices
    return cfg


def apply_overrides_switching_model(raw: dict, overrides: list[str], models: Catalog) -> tuple[dict, list[str]]:
    """``--set`` overrides; an override of ``model.name`` to another model drops the file's keys of
    the old model that the new one lacks. Returns the raw mapping and what was dropped."""
    parsed = [parse_override(text) for text in overrides]
    file_model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    new_name = next((v for keys, v in reversed(parsed) if keys == ["model", "name"]), None)
    notices: list[str] = []
    if new_name is not None and new_name != file_model.get("name") and new_name in models:
        old = models.get(file_model.get("name"))
        old_keys = set(old.params.__dataclass_fields__) if old is not None else set()  # a typo of the file's own model stays an error
        dropped = sorted(k for k in file_model if k in old_keys and k not in models[new_name].params.__dataclass_fields__)
        raw = {**raw, "model": {k: v for k, v in file_model.items() if k not in dropped}}
        if dropped:
            notices.append(f"model.name={new_name}: dropped the file's model key(s) {', '.join(dropped)} "
                           f"({file_model.get('name')} parameters that {new_name} does not have)")
        score = (raw.get("evaluate") or {}).get("score")
        if score is not None and score not in models[new_name].scores and all(keys != ["evaluate", "score"] for keys, _ in parsed):
            raw["evaluate"] = {k: v for k, v in raw["evaluate"].items() if k != "score"}
            notices.append(f"model.name={new_name}: evaluate.score {score!r} is not a score of {new_name}; "
                           f"using its primary score {models[new_name].scores[0]!r}")
    raw = copy.deepcopy(raw)
    for keys, value in parsed:
        set_dotted(raw, keys, value)
    return raw, notices


def validate(raw: dict, base_dir: Path, source: Path | None = None, *, models: Catalog) -> Config:
    """Validate a raw mapping against :class:`Config` and the model catalog; collects all errors into one ConfigError."""
    errors: list[str] = []
    model_raw = raw.get("model", {"name": "vae3d"})
    rest = {k: v for k, v in raw.items() if k != "model"}
    cfg = build(Config, rest, "", base_dir, errors, skip={"model", "source", "notices"})
    cfg.source = source
    cfg.model = _build_model(model_raw, base_dir, errors, models)
    if cfg.model is not None and "score" not in (raw.get("evaluate") or {}):
        cfg.evaluate.score = models[cfg.model.name].scores[0]  # unset: the model's own primary score
    if not errors:
        errors.extend(_cross_checks(cfg, models))
    if errors:
        where = f"{source}: " if source else ""
        raise ConfigError(where + ("invalid config:\n  " if len(errors) > 1 else "") + "\n  ".join(errors))
    return cfg


def _build_model(raw: Any, base_dir: Path, errors: list[str], models: Catalog) -> Any:
    if not isinstance(raw, dict) or "name" not in raw:
        errors.append("model: must be a mapping with a 'name' key, e.g. model: {name: vae3d}")
        return None
    name = raw["name"]
    if name not in models:
        errors.append(f"model.name: unknown model {name!r}{suggest(str(name), models)}; registered: {', '.join(sorted(models))}")
        return None
    return build(models[name].params, raw, "model.", base_dir, errors)


def _cross_checks(cfg: Config, models: Catalog) -> list[str]:
    errs = []
    if cfg.train.patch_size > cfg.extract.cube_size:
        errs.append(f"train.patch_size: {cfg.train.patch_size} is larger than extract.cube_size {cfg.extract.cube_size}")
    lo, hi = cfg.extract.hu_window
    if lo >= hi:
        errs.append(f"extract.hu_window: lower bound {lo} must be below upper bound {hi}")
    if not 0 < cfg.split.test_fraction < 1:
        errs.append("split.test_fraction: must be between 0 and 1")
    if not 0 <= cfg.split.val_fraction < 1:
        errs.append("split.val_fraction: must be in [0, 1)")
    if cfg.split.method == "kfold" and not 0 <= cfg.split.fold < cfg.split.n_folds:
        errs.append(f"split.fold: {cfg.split.fold} is not in 0..{cfg.split.n_folds - 1}")
    if cfg.model is not None and hasattr(cfg.model, "check"):
        errs.extend(cfg.model.check(cfg))
    if cfg.model is not None:
        names = models[cfg.model.name].scores
        if names and cfg.evaluate.score not in names:
            errs.append(f"evaluate.score: {cfg.evaluate.score!r} is not a score of model {cfg.model.name}{suggest(cfg.evaluate.score, names)}; "
                        f"its scores: {', '.join(names)}")
    for name in ("epochs", "batch_size", "patch_size"):
        if getattr(cfg.train, name) < 1:
            errs.append(f"train.{name}: must be ≥ 1")
    if cfg.score.mc_samples < 1:
        errs.append("score.mc_samples: must be ≥ 1")
    if not 0 <= cfg.score.overlap < 1:
        errs.append(f"score.overlap: {cfg.score.overlap} must be in [0, 1)")
    if cfg.score.region == "whole" and cfg.run.engine == "ray":
        errs.append("score.region: whole is scored by the local engine only (set run.engine: local)")
    if cfg.ingest.format == "images":
        errs += _images_checks(cfg.ingest.images)
    if cfg.ingest.spacing_mm <= 0:
        errs.append("ingest.spacing_mm: must be > 0")
    if cfg.ingest.max_voxels < 1:
        errs.append("ingest.max_voxels: must be ≥ 1")
    errs += _map_checks(cfg, models)
    if cfg.evaluate.overlay_top_n < 0:
        errs.append("evaluate.overlay_top_n: must be ≥ 0")
    unknown = sorted(set(cfg.score.splits) - {"train", "val", "test", "buffer", "unused"})
    if unknown:
        errs.append(f"score.splits: unknown split(s) {unknown}; choose from train, val, test, buffer, unused")
    if cfg.evaluate.split not in cfg.score.splits:
        errs.append(f"evaluate.split: {cfg.evaluate.split!r} is not scored (add it to score.splits)")
    if cfg.run.workers < 1:
        errs.append("run.workers: must be ≥ 1")
    if cfg.run.engine == "ray":
        try:
            require_ray()
        except ConfigError as exc:
            errs.append(str(exc))
    return errs


# labels CSV keys that a folder layout (ingest.images.labels_from: folders) has no use for
CSV_ONLY = ("labels", "patient_column", "class_columns", "split_column", "spacing_column", "keep")


def _images_checks(ic: ImagesConfig) -> list[str]:
    """The ``ingest.images`` section (``ingest.format: images``): the class source, the patient
    pattern, and the keys of one labels source used with the other."""
    errs = []
    if ic.labels_from == "csv":
        if bool(ic.label_column) == bool(ic.class_columns):
            errs.append("ingest.images: set either label_column (one class column) or class_columns (one-hot columns), not both"
                        if ic.class_columns else "ingest.images.label_column: needed unless class_columns lists one-hot columns")
        if ic.patient_column and ic.patient_regex:
            errs.append("ingest.images: set either patient_column (a labels CSV column) or patient_regex (from the file name), not both")
        if ic.folder_classes is not None:
            errs.append("ingest.images.folder_classes: only used with labels_from: folders (class folders), not with a labels CSV")
    else:
        errs += [f"ingest.images.{key}: a labels CSV key, not used with labels_from: folders (the class is the name of each file's "
                 "folder, the split a train/val/test folder above it, the patient patient_regex); remove it or set labels_from: csv"
                 for key in CSV_ONLY if getattr(ic, key)]
        if ic.folder_classes is not None and not ic.folder_classes:
            errs.append("ingest.images.folder_classes: list at least one class folder name, or leave it unset (any folder)")
    if ic.patient_regex == "":
        errs.append("ingest.images.patient_regex: empty; give a pattern such as ^(person\\d+), or leave it unset (one patient per image)")
    elif ic.patient_regex is not None:
        try:
            re.compile(ic.patient_regex)
        except re.error as exc:
            errs.append(f"ingest.images.patient_regex: '{ic.patient_regex}' is not a valid regular expression ({exc})")
    if not ic.normal_classes:
        errs.append("ingest.images.normal_classes: list at least one normal class")
    if ic.pixel_spacing_mm is not None and ic.pixel_spacing_mm <= 0:
        errs.append("ingest.images.pixel_spacing_mm: must be > 0 mm")
    return errs


def _map_checks(cfg: Config, models: Catalog) -> list[str]:
    """The ``map`` section: ranges, and a score the model has."""
    errs = []
    if not 0 <= cfg.map.overlap < 1:
        errs.append("map.overlap: must be in [0, 1)")
    for name in ("batch_size", "mc_samples", "max_candidates"):
        if getattr(cfg.map, name) < 1:
            errs.append(f"map.{name}: must be ≥ 1")
    for name in ("smooth_mm", "lung_closing_mm", "nms_mm", "hit_mm"):
        if not getattr(cfg.map, name) >= 0:
            errs.append(f"map.{name}: must be ≥ 0 mm")
    if cfg.map.split is not None and cfg.map.split not in ("train", "val", "test"):
        errs.append(f"map.split: {cfg.map.split!r} is not a split; expected train, val or test (unset: evaluate.split)")
    if not 0 < cfg.map.size_level < 1:
        errs.append("map.size_level: must be in (0, 1), a fraction of the candidate's peak value")
    if cfg.map.score is not None and cfg.model is not None and cfg.map.score not in models[cfg.model.name].scores:
        errs.append(f"map.score: {cfg.map.score!r} is not a score of model {cfg.model.name}; its scores: {', '.join(models[cfg.model.name].scores)}")
    return errs
