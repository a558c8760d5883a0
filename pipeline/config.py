"""Typed config schema, YAML loading, ``--set`` overrides and validation with clear errors.

A config is YAML (``yaml.safe_load``) validated against the dataclasses below. Every error names
the file and the dotted key; an unknown key suggests the nearest valid one. Relative paths are
resolved against the config file's folder, so a config works from any working directory.

Model parameters are validated against the parameter dataclass that the chosen model registers
(see :mod:`models.registry`), so ``model: {name: vae3d, latnt_dim: 8}`` is caught too.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from pipeline.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Run-wide settings."""

    seed: int = 0  # one seed controls splits, sampling, augmentation and initialisation
    threads: int = 2  # torch intra-op threads
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 1  # processes for per-item stages (ingest, extract); Ray Data scoring actors with engine: ray
    engine: Literal["local", "ray"] = "local"  # local: process pool; ray: Ray tasks and Ray Data (pip install medanomaly[ray])
    out: Optional[Path] = None  # run directory; default ./runs/<config name>


@dataclass
class ArraySource:
    """One file of a multi-file array dataset; paths are relative to ``ingest.input`` (a folder)."""

    file: str  # .npz, IDX images (e.g. t10k-images-idx3-ubyte.gz) or CSV (one image per row, label last)
    labels_file: Optional[str] = None  # IDX labels file that goes with IDX images
    name: str = ""  # kept in samples.csv's ``source`` column (e.g. for split.test_source)


@dataclass
class ArraysConfig:
    """Keys, geometry and label mapping of an array dataset (``ingest.format: arrays``)."""

    images: str = "images"  # npz key, or the suffix of split-prefixed keys (train_images, val_images, ...)
    labels: str = "labels"  # npz key (CSV: the label is the last column)
    patient_id: Optional[str] = None  # npz key of patient IDs; default: every image is its own patient
    spatial_dims: int = 2
    normal_labels: list[float] = field(default_factory=lambda: [0.0])
    anomaly_labels: Optional[list[float]] = None  # default: every label that is not normal
    spacing: Optional[str] = None  # npz key of per-image pixel spacing (mm; one value or one per axis): resampled to ingest.spacing_mm
    pixel_spacing_mm: Optional[float] = None  # spacing of every image when the file has none; unset: images are used on their own grid
    keep: list[str] = field(default_factory=list)  # npz keys (one value per image) copied into samples.csv, e.g. reader_id
    image_shape: Optional[list[int]] = None  # CSV: spatial shape of each row's pixels (default: square)
    sources: list[ArraySource] = field(default_factory=list)  # several files under ingest.input (a folder), concatenated


@dataclass
class ImagesConfig:
    """A folder of 2D image files plus a labels CSV (``ingest.format: images``): X-ray, dermatology.

    Files: DICOM (CR, DX, secondary capture; compressed transfer syntaxes too), PNG, JPEG, TIFF.
    Each row of the labels CSV names one image (a path under ``ingest.input``, or an ID completed
    with ``extensions``) and its class, either in ``label_column`` or as one-hot ``class_columns``.
    """

    labels: Optional[Path] = None  # labels CSV (relative to the config file, like every path); default: labels.csv inside ingest.input
    id_column: str = "image"  # image path relative to ingest.input, or an ID (ISIC 2018: 'image')
    extensions: list[str] = field(default_factory=lambda: [".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff"])  # tried when the ID is not a file
    patient_column: Optional[str] = None  # patient (or lesion) ID for grouped splits; default: each image is its own patient
    label_column: Optional[str] = "label"  # one column holding each image's class
    class_columns: list[str] = field(default_factory=list)  # instead: one-hot columns (ISIC 2018: MEL, NV, BCC, AKIEC, BKL, DF, VASC)
    normal_classes: list[Union[str, float]] = field(default_factory=lambda: ["0"])  # classes used as normal
    anomaly_classes: Optional[list[Union[str, float]]] = None  # default: every class that is not normal; others are left out
    split_column: Optional[str] = None  # column with train/val/test, for split.method: predefined
    channels: Literal[1, 3] = 1  # 1: greyscale (X-ray); 3: RGB (dermatology); another count is a per-file error
    pixel_spacing_mm: Optional[float] = None  # pixel size of files that carry none (PNG/JPEG/TIFF); unset: used on their own grid
    spacing_column: Optional[str] = None  # per-image pixel size (mm) in the labels CSV; overrides pixel_spacing_mm
    keep: list[str] = field(default_factory=list)  # labels CSV columns copied into samples.csv


@dataclass
class IngestConfig:
    """DICOM CT series → NIfTI volumes on an isotropic grid (LPS geometry kept), an array dataset, or 2D image files."""

    format: Literal["dicom", "arrays", "images"] = "dicom"
    input: Path = Path("dicom")  # dicom: folder tree searched recursively; arrays: the .npz file; images: the image folder
    arrays: ArraysConfig = field(default_factory=ArraysConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    spacing_mm: float = 1.0  # isotropic output spacing
    min_slices: int = 8  # series with fewer slices are rejected
    spacing_tolerance: float = 0.1  # allowed relative deviation of slice gaps from the median
    antialias: Optional[bool] = None  # Gaussian pre-filter on downsampled axes; default: on for images, off for CT and arrays

    @property
    def antialias_on(self) -> bool:
        """``antialias`` with its default resolved: on for 2D image files, which are typically
        downsampled 5-10x (0.1-0.2 mm detector pixels to 1 mm) and alias badly without it."""
        return self.antialias if self.antialias is not None else self.format == "images"


@dataclass
class BackgroundConfig:
    """Normal lung-tissue cubes sampled away from every nodule (extra normal samples)."""

    enabled: bool = False
    stride_mm: int = 16  # grid step of candidate centres
    min_distance_mm: float = 32.0  # Chebyshev distance from any nodule centre (≥ one cube)
    lung_fraction: float = 0.5  # minimum fraction of cube voxels inside the lung mask
    lung_hu_max: float = -400.0  # lung mask threshold (air-like tissue enclosed by the body)
    max_per_series: int = 2000  # cap, sampled uniformly with the run seed


@dataclass
class ExtractConfig:
    """Nodule table → 32³ cubes at 1 mm, windowed and normalised."""

    nodules: Path = Path("nodules.csv")
    cube_size: int = 32
    hu_window: tuple[float, float] = (-1000.0, 400.0)  # intensity window (HU for CT; e.g. [0, 255] for 8-bit images)
    normalise: Literal["window", "none", "minmax", "zscore"] = "window"  # window: clip to hu_window, scale to [0,1]; minmax: each sample to [0,1]; zscore: per-channel mean/std of the training normals (stored in the checkpoint)
    nodule_label: Literal["anomaly", "malignancy"] = "malignancy"
    malignancy_column: str = "malignancy_median"
    normal_max_malignancy: float = 3.0  # rating ≤ this → normal (label 0)
    anomaly_min_malignancy: float = 4.0  # rating ≥ this → anomaly (label 1); between: excluded
    background: BackgroundConfig = field(default_factory=BackgroundConfig)


@dataclass
class SplitConfig:
    """Stratified, patient-grouped splits written to ``splits.csv``."""

    method: Literal["holdout", "kfold", "predefined", "sample", "test_only"] = "holdout"  # predefined: the dataset's own split; sample: fixed-size draws (below); test_only: score everything (new data)
    test_fraction: float = 0.25
    val_fraction: float = 0.2  # of the non-test groups
    n_folds: int = 5
    fold: int = 0  # which k-fold fold is the test fold
    group_by: Literal["auto", "patient", "spatial_block"] = "auto"  # auto: blocks if one patient
    block_mm: float = 64.0  # spatial block edge for group_by=spatial_block
    anomalies_to_test: bool = False  # groups holding an anomaly go wholly to test
    contamination: float = 0.0  # fraction of anomalies mixed into training (seed 003)
    # method: sample (e.g. the MNIST-9 protocol): a class-balanced test set, then fixed-size train/val draws of normals
    test_per_class: int = 450  # normals and anomalies each drawn for the test set
    test_source: Optional[str] = None  # draw the test set only from this array source (samples.csv ``source``)
    train_count: Optional[int] = None  # normals drawn for training from what is left (default: all but val)
    val_count: int = 1000  # normals drawn for validation from what is left after training


@dataclass
class TrainConfig:
    """Training on random sub-patches of the normal training cubes."""

    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    patch_size: int = 28
    flips: bool = True
    patience: int = 10  # early stopping on the normal validation loss
    max_grad_norm: float = 10.0


@dataclass
class ScoreConfig:
    """Scoring of every sample's centre patch."""

    mc_samples: int = 100  # K for the Monte-Carlo ELBO
    model: Optional[Path] = None  # score with this trained model folder instead of this run's train stage
    threshold: Literal["gamma", "percentile"] = "gamma"  # p-values from normal validation scores
    fpr: float = 0.05  # flag samples with p < fpr (the target false-positive rate)
    bh: bool = False  # Benjamini-Hochberg over the scored batch instead of a per-sample cut
    batch_size: int = 16
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test", "buffer", "unused"])  # which samples are scored (overlays paint what is scored)


@dataclass
class EvaluateConfig:
    """Metrics and overlays on the test split."""

    score: str = "elbo"  # primary score column (higher = more anomalous); unset: the model's first score
    split: str = "test"
    bootstrap: int = 1000
    ci: float = 0.95
    overlays: bool = True
    overlay_top_n: int = 10  # 2D inputs: PNG overlays of the n most anomalous and n random normal cases
    figures: bool = True  # ROC/PR/density plots, galleries and report.html (benchmarks turn them off: metrics.json only)


@dataclass
class BenchDetector:
    """One detector row-group of a benchmark protocol: config overrides on top of the protocol config."""

    label: str  # row label in docs/BENCHMARKS.md, e.g. "VAE (Bernoulli)"
    set: dict = field(default_factory=dict)  # dotted key → value, applied like --set (model.name: vae2d, train.epochs: 30)
    scores: Optional[list[str]] = None  # score columns reported as rows (default: every score of the model)
    quick: bool = True  # included in --quick runs
    quick_set: dict = field(default_factory=dict)  # this detector's own --quick overrides (after bench.quick)


@dataclass
class BenchReference:
    """A figure reported by a seed study, printed beside ours."""

    detector: str  # BenchDetector label it compares with
    score: str
    auroc: float
    source: str  # e.g. "seed 000, MNIST 0-8 vs 9, VAE-ELBO"


@dataclass
class BenchView:
    """An extra evaluation of the same runs on a subset of classes (e.g. malignancy 1-2 vs 4-5)."""

    label: str
    normal_classes: list[float] = field(default_factory=list)
    anomaly_classes: list[float] = field(default_factory=list)


@dataclass
class BenchConfig:
    """A benchmark protocol (``pipeline bench``): detectors × repeats (× a sweep) through ``pipeline run``."""

    protocol: str = ""  # title, e.g. "MNIST-9"
    order: int = 0  # position of this protocol in docs/BENCHMARKS.md
    description: str = ""  # what is normal, what is anomalous, where the split comes from
    selection: str = ""  # the written hyper-parameter / epoch selection rule
    data: dict = field(default_factory=dict)  # dotted config key → path under --data-root (e.g. ingest.input: mnist)
    repeat: Literal["seeds", "folds"] = "seeds"  # seeds: run.seed = 0..n-1; folds: split.fold = 0..n-1
    repeats: int = 3
    sweep_key: Optional[str] = None  # e.g. split.contamination: every detector runs at each value
    sweep_values: list[float] = field(default_factory=list)
    detectors: list[BenchDetector] = field(default_factory=list)
    references: list[BenchReference] = field(default_factory=list)
    views: list[BenchView] = field(default_factory=list)
    quick: dict = field(default_factory=dict)  # overrides for --quick (smaller data, fewer epochs)
    quick_repeats: int = 1


@dataclass
class Config:
    """A validated pipeline config. ``model`` holds the registered model's parameter object."""

    run: RunConfig = field(default_factory=RunConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)  # read only by ``pipeline bench``; no stage fingerprint includes it
    source: Optional[Path] = None  # the YAML file this came from

    def section(self, name: str) -> dict:
        """A JSON-able dict of one section (used for stage fingerprints and the manifest)."""
        return to_plain(getattr(self, name))

    def to_dict(self) -> dict:
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "source"}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def bundled_configs_dir() -> Path:
    """The repository's ``configs/`` folder (next to the installed ``pipeline`` package)."""
    return Path(__file__).resolve().parent.parent / "configs"


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


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a YAML config. Raises :class:`ConfigError` naming each problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    return validate(raw, base_dir=path.resolve().parent, source=path.resolve())


def validate(raw: dict, base_dir: Path, source: Path | None = None) -> Config:
    """Validate a raw mapping against :class:`Config`; collects all errors into one ConfigError."""
    errors: list[str] = []
    model_raw = raw.get("model", {"name": "vae3d"})
    rest = {k: v for k, v in raw.items() if k != "model"}
    cfg = _build(Config, rest, "", base_dir, errors, skip={"model", "source"})
    cfg.source = source
    cfg.model = _build_model(model_raw, base_dir, errors)
    if cfg.model is not None and "score" not in (raw.get("evaluate") or {}):
        from models.registry import MODELS

        cfg.evaluate.score = MODELS[cfg.model.name].score_names[0]  # unset: the model's own primary score
    if not errors:
        errors.extend(_cross_checks(cfg))
    if errors:
        where = f"{source}: " if source else ""
        raise ConfigError(where + ("invalid config:\n  " if len(errors) > 1 else "") + "\n  ".join(errors))
    return cfg


def _build_model(raw: Any, base_dir: Path, errors: list[str]) -> Any:
    from models.registry import MODELS  # late import: models imports torch

    if not isinstance(raw, dict) or "name" not in raw:
        errors.append("model: must be a mapping with a 'name' key, e.g. model: {name: vae3d}")
        return None
    name = raw["name"]
    if name not in MODELS:
        errors.append(f"model.name: unknown model {name!r}{_suggest(str(name), MODELS)}; registered: {', '.join(sorted(MODELS))}")
        return None
    params_cls = MODELS[name].Params
    return _build(params_cls, raw, "model.", base_dir, errors)


def _cross_checks(cfg: Config) -> list[str]:
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
        from models.registry import MODELS

        names = MODELS[cfg.model.name].score_names
        if names and cfg.evaluate.score not in names:
            errs.append(f"evaluate.score: {cfg.evaluate.score!r} is not a score of model {cfg.model.name}{_suggest(cfg.evaluate.score, names)}; its scores: {', '.join(names)}")
    for name in ("epochs", "batch_size", "patch_size"):
        if getattr(cfg.train, name) < 1:
            errs.append(f"train.{name}: must be ≥ 1")
    if cfg.score.mc_samples < 1:
        errs.append("score.mc_samples: must be ≥ 1")
    ic = cfg.ingest.images
    if cfg.ingest.format == "images":
        if bool(ic.label_column) == bool(ic.class_columns):
            errs.append("ingest.images: set either label_column (one class column) or class_columns (one-hot columns), not both"
                        if ic.class_columns else "ingest.images.label_column: needed unless class_columns lists one-hot columns")
        if not ic.normal_classes:
            errs.append("ingest.images.normal_classes: list at least one normal class")
        if ic.pixel_spacing_mm is not None and ic.pixel_spacing_mm <= 0:
            errs.append("ingest.images.pixel_spacing_mm: must be > 0 mm")
    if cfg.ingest.spacing_mm <= 0:
        errs.append("ingest.spacing_mm: must be > 0")
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
        from pipeline.ray_engine import require_ray

        try:
            require_ray()
        except ConfigError as exc:
            errs.append(str(exc))
    return errs


# --------------------------------------------------------------------------------------------
# A small typed validator over dataclasses
# --------------------------------------------------------------------------------------------


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _build(cls, raw: Any, prefix: str, base_dir: Path, errors: list[str], skip: set[str] = frozenset()):
    """Instantiate dataclass ``cls`` from ``raw``, checking keys and types; errors are collected."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    allowed = set(fields) | ({"name"} if prefix == "model." else set())
    kwargs = {}
    for key, value in raw.items():
        if key not in allowed:
            errors.append(f"{prefix}{key}: unknown key{_suggest(str(key), allowed)}")
            continue
        if key not in fields:
            continue
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", base_dir, errors)
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in kwargs and n not in raw]
    if required:
        errors.append(f"{prefix.rstrip('.') or 'config'}: missing required key(s) {', '.join(map(repr, required))}")
        return None
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str, base_dir: Path, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", base_dir, errors)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for member in inner[:-1]:  # the first member that accepts the value; the last one reports errors
            trial: list[str] = []
            out = _coerce(value, member, key, base_dir, trial)
            if not trial:
                return out
        return _coerce(value, inner[-1], key, base_dir, errors)
    if origin is Literal:
        if value not in args:
            errors.append(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}{_suggest(str(value), map(str, args))}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            errors.append(f"{key}: expected a path string, got {type(value).__name__}")
            return value
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base_dir / p).resolve()
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{key}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{key}: expected a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{key}: expected a mapping, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            errors.append(f"{key}: expected a list, got {value!r}")
            return value
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                errors.append(f"{key}: expected {len(args)} values, got {len(value)}")
                return value
            return tuple(_coerce(v, a, f"{key}[{i}]", base_dir, errors) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]", base_dir, errors) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    return value


def to_plain(obj: Any) -> Any:
    """Dataclasses/paths/tuples → JSON-able builtins (stable, for hashing and the manifest)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj
