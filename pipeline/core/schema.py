"""The config schema: one dataclass per section of a pipeline config (YAML).

Defaults here are the documented defaults of every key; :mod:`pipeline.core.config` loads YAML
into these classes and :mod:`pipeline.core.validation` checks the types. The ``model`` section is
not defined here: each model declares its own parameter class in :mod:`models.catalog`, and the
CLI hands that catalog to :func:`pipeline.core.config.load_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pipeline.core.validation import added, to_plain


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
    """A folder of 2D image files (``ingest.format: images``): X-ray, dermatology.

    Files: DICOM (CR, DX, secondary capture; compressed transfer syntaxes too), PNG, JPEG, TIFF.
    ``labels_from: csv``: each row of the labels CSV names one image (a path under ``ingest.input``,
    or an ID completed with ``extensions``) and its class, either in ``label_column`` or as one-hot
    ``class_columns``. ``labels_from: folders`` (ImageFolder layout, no CSV): every image file under
    ``ingest.input`` is one image, ``<input>/[<split>/]<class>/<file>``, its class the name of its
    folder and ``<split>`` (train, val/validation, test) its predefined split. The CSV-only keys
    (labels, patient_column, class_columns, split_column, spacing_column, keep) are then config errors.
    """

    labels_from: Literal["csv", "folders"] = "csv"  # csv: the labels CSV; folders: class (and split) from the folder names
    labels: Optional[Path] = None  # labels CSV (relative to the config file, like every path); default: labels.csv inside ingest.input
    id_column: str = "image"  # image path relative to ingest.input, or an ID (ISIC 2018: 'image')
    # csv: tried when the ID is not a file; folders: the files read (name ending in one of them, any case)
    extensions: list[str] = field(default_factory=lambda: [".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff"])
    patient_column: Optional[str] = None  # patient (or lesion) ID for grouped splits; default: each image is its own patient
    # instead (either labels_from): a regular expression searched in each file NAME; its first group (else the whole
    # match) is the patient ID, a name it does not match is a per-file error. Kermany chest X-rays: ^(person\d+|(?:NORMAL2-)?IM-\d+)
    patient_regex: Optional[str] = None
    folder_classes: Optional[list[str]] = None  # labels_from: folders: the allowed class folder names (another is a per-file error)
    label_column: Optional[str] = "label"  # one column holding each image's class
    class_columns: list[str] = field(default_factory=list)  # instead: one-hot columns (ISIC 2018: MEL, NV, BCC, AKIEC, BKL, DF, VASC)
    normal_classes: list[Union[str, float]] = field(default_factory=lambda: ["0"])  # classes used as normal (case-sensitive)
    anomaly_classes: Optional[list[Union[str, float]]] = None  # default: every class that is not normal; others are left out
    split_column: Optional[str] = None  # column with train/val/test, for split.method: predefined
    channels: Literal[1, 3] = 1  # 1: greyscale (X-ray); 3: RGB (dermatology); another count is a per-file error
    pixel_spacing_mm: Optional[float] = None  # pixel size of files that carry none (PNG/JPEG/TIFF); unset: used on their own grid
    spacing_column: Optional[str] = None  # per-image pixel size (mm) in the labels CSV; overrides pixel_spacing_mm
    # resize every image so its shorter side has this many pixels (aspect kept) instead of resampling to
    # ingest.spacing_mm: for photographs whose pixels have no physical size (dermoscopy: 600x450 or 200x150 -> 171x128)
    short_side: Optional[int] = None
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
    # a series whose declared size (or 1 mm grid) exceeds this is rejected before its pixels are read (≈ 16 GiB peak at the limit)
    max_voxels: int = 2**30
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
    lung_fraction: float = 0.5  # minimum fraction of cube voxels inside the lung mask (centres: lung_fraction)
    # lung_fraction: cubes mostly of lung air; lung_region: every cube whose centre lies in the lung region the map reads
    # (preprocessing.lung: the lung with its vessels, hilum and wall), so training sees the borders it is mapped on
    centres: Literal["lung_fraction", "lung_region"] = added("lung_fraction", "2026-12-07")
    lung_closing_mm: float = added(10.0, "2026-12-07")  # centres: lung_region: the region's closing radius (as map.lung_closing_mm)
    lung_hu_max: float = -400.0  # lung mask threshold (air-like tissue enclosed by the body)
    max_per_series: int = 2000  # cap, sampled uniformly with the run seed


@dataclass
class ExtractConfig:
    """Nodule table → 32³ cubes at 1 mm, windowed and normalised."""

    nodules: Path = Path("nodules.csv")
    cube_size: int = 32
    hu_window: tuple[float, float] = (-1000.0, 400.0)  # intensity window (HU for CT; e.g. [0, 255] for 8-bit images)
    # window: clip to hu_window, scale to [0,1]; minmax: each sample to [0,1]; zscore: per-channel mean/std of the training normals
    # (stored in the checkpoint)
    normalise: Literal["window", "none", "minmax", "zscore"] = "window"
    nodule_label: Literal["anomaly", "malignancy"] = "malignancy"
    malignancy_column: str = "malignancy_median"
    normal_max_malignancy: float = 3.0  # rating ≤ this → normal (label 0)
    anomaly_min_malignancy: float = 4.0  # rating ≥ this → anomaly (label 1); between: excluded
    background: BackgroundConfig = field(default_factory=BackgroundConfig)


@dataclass
class SplitConfig:
    """Stratified, patient-grouped splits written to ``splits.csv``."""

    # predefined: the dataset's own split; sample: fixed-size draws (below); test_only: score everything (new data)
    method: Literal["holdout", "kfold", "predefined", "sample", "test_only"] = "holdout"
    test_fraction: float = 0.25
    val_fraction: float = 0.2  # of the non-test groups
    n_folds: int = 5
    fold: int = 0  # which k-fold fold is the test fold
    group_by: Literal["auto", "patient", "spatial_block"] = "auto"  # auto: blocks if one patient
    block_mm: float = 64.0  # spatial block edge for group_by=spatial_block
    anomalies_to_test: bool = False  # groups holding an anomaly go wholly to test
    # how validation is grouped: same as test (group_by), or spatial blocks of block_mm within the training patients
    # (leave one patient out with few patients: the test patient stays whole, validation comes from the others' blocks)
    val_group_by: Literal["same", "spatial_block"] = added("same", "2026-12-04")
    contamination: float = 0.0  # fraction of anomalies mixed into training (Berg et al. 2019)
    # method: sample (e.g. the MNIST-9 protocol): a class-balanced test set, then fixed-size train/val draws of normals
    test_per_class: int = 450  # normals and anomalies each drawn for the test set
    test_normal: Optional[int] = None  # normals drawn for the test set instead (HAM10000 protocol: 250)
    test_by_class: bool = False  # test_per_class anomalies of EACH anomalous class (all of a class with fewer)
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
    # bf16: the training forward pass under torch.autocast(bfloat16) for the one-loss families (vae, synth, geom, ...);
    # 1.5x faster 3D U-Net steps on a CPU with AVX512-BF16 (docs/PERFORMANCE.md), slower on CPUs without it
    precision: Literal["fp32", "bf16"] = added("fp32", "2026-12-07")


@dataclass
class ScoreConfig:
    """Scoring of every sample's centre patch."""

    mc_samples: int = 100  # K for the Monte-Carlo ELBO
    model: Optional[Path] = None  # score with this trained model folder instead of this run's train stage
    threshold: Literal["gamma", "percentile"] = "gamma"  # p-values from normal validation scores
    fpr: float = 0.05  # flag samples with p < fpr (the target false-positive rate)
    bh: bool = False  # Benjamini-Hochberg over the scored batch instead of a per-sample cut
    batch_size: int = 16
    # which samples are scored (overlays paint what is scored)
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test", "buffer", "unused"])
    # centre: the centre patch of the training patch size; whole: the whole extracted cube or image, the
    # training patch slid over it (MONAI sliding window, ``overlap``): each score is the maximum of its
    # window-score map, the residual the windows' residuals averaged (a detector trained on patches of a larger image)
    region: Literal["centre", "whole"] = added("centre", "2026-12-04")
    overlap: float = added(0.25, "2026-12-04")  # region: whole: fraction of the window shared by neighbours


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
class MapConfig:
    """Anomaly maps (the ``map`` stage): the detector swept over each CT's lung, or over each whole 2D image.

    Distances (``*_mm``) are in mm, or in pixels of the ingested grid for 2D images of unknown pixel size."""

    enabled: bool = True  # CT series and 2D images (3D array datasets have no scan to map)
    overlap: float = 0.25  # fraction of the window shared by neighbouring windows (MONAI SlidingWindowInferer)
    batch_size: int = 32  # windows scored at once
    score: Optional[str] = None  # window score mapped and calibrated; unset: evaluate.score
    mc_samples: int = 4  # Monte-Carlo samples per window (the map's calibration records its rank correlation with score.mc_samples)
    lung_margin_mm: float = 10.0  # windows are scored only where they meet the lung mask dilated by this margin
    nms_mm: float = 15.0  # candidates: local maxima at least this far apart (mm)
    max_candidates: int = 50  # per series, highest score first
    hit_mm: float = 5.0  # a candidate hits a nodule within its radius (diameter_mm / 2 in the table), or this when unknown
    candidates: Literal["voxel", "window"] = "voxel"  # voxel: maxima of the smoothed voxel map in the lung region; window: of the window-score map
    smooth_mm: float = 2.0  # Gaussian sigma (mm) of the voxel map before its local maxima are taken (0: none)
    lung_closing_mm: float = 10.0  # the lung region: the lung mask filled per slice and closed by a ball of this radius (juxtapleural nodules)
    size_level: float = 0.5  # a candidate's size: the map component above this fraction of its peak value (equivalent-sphere diameter)
    # the split mapped: 2D, its images (unset: evaluate.split); CT, the series whose normal cubes all lie in it (unset: every series)
    split: Optional[str] = added(None, "2026-12-04")
    # label-free selection (evaluation.painted_blobs): this many blobs painted into each series' normal validation tissue,
    # found by the map there (FROC, CPM in map_metrics.json "selection"); 0: off
    selection_blobs: int = added(0, "2026-12-07")
    selection_radius_mm: tuple[float, float] = added((2.5, 8.0), "2026-12-07")  # blob scale r (mm), log-uniform
    selection_hu: tuple[float, float] = added((-500.0, 50.0), "2026-12-07")  # blob peak density (HU), uniform
    selection_seed: int = added(7, "2026-12-07")


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
    """A figure reported by a source study (the paper a method comes from), printed beside ours."""

    detector: str  # BenchDetector label it compares with
    score: str
    auroc: float
    source: str  # e.g. "Santos Buitrago et al. 2018, MNIST 0-8 vs 9, VAE-ELBO"


@dataclass
class BenchView:
    """An extra evaluation of the same runs on a subset of classes (e.g. malignancy 1-2 vs 4-5)."""

    label: str
    normal_classes: list[float] = field(default_factory=list)
    anomaly_classes: list[float] = field(default_factory=list)


@dataclass
class BenchEnsemble:
    """An unsupervised ensemble row: the members' p-values (normal validation data) combined, per repeat."""

    label: str  # row label, e.g. "ensemble (synthetic anomalies + GEOM)"
    members: list[str] = field(default_factory=list)  # BenchDetector labels, fixed before any test result
    method: Literal["fisher", "mean_neglog"] = "fisher"


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
    ensembles: list[BenchEnsemble] = field(default_factory=list)
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
    map: MapConfig = field(default_factory=MapConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)  # read only by ``pipeline bench``; no stage fingerprint includes it
    source: Optional[Path] = None  # the YAML file this came from
    notices: list[str] = field(default_factory=list)  # what loading changed on the user's behalf (printed by the CLI)

    def section(self, name: str) -> dict:
        """A JSON-able dict of one section, as stage fingerprints see it (parameters added later are
        left out while at their default: :func:`pipeline.core.validation.added`)."""
        return to_plain(getattr(self, name), fingerprint=True)

    def to_dict(self) -> dict:
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in ("source", "notices")}
