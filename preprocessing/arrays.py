"""Array datasets (npz): images already on a grid, e.g. PneumoniaMNIST or LIDC nodule crops.

``ingest`` reads the npz named by ``ingest.input``: either one images/labels pair (keys from
``ingest.arrays``) or split-prefixed keys (``train_images``, ``val_images``, ...) whose prefix is
kept as ``source_split``. Images become (N, C, *spatial) float32 (a trailing channel axis of 1 or 3
is moved to the front). Images containing NaN/inf are reported per item and dropped. Labels map to
0 (``normal_labels``), 1 (``anomaly_labels``, default every other label) or are left out.

``extract`` centre-crops every image to ``extract.cube_size`` (an image smaller than that is a
per-item error), writing the same ``cubes.npz`` / ``samples.csv`` contract as CT cubes (without
geometry columns), so split, train, score and evaluate are shared with the CT path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.config import Config
from pipeline.errors import StageError
from pipeline.results import StageResult

ARRAYS_NPZ = "arrays.npz"
ARRAYS_CSV = "arrays.csv"
SPLIT_PREFIXES = ("train", "val", "test")


def _channels_first(images: np.ndarray, spatial_dims: int) -> np.ndarray:
    if images.ndim == spatial_dims + 1:
        return images[:, None]
    if images.ndim == spatial_dims + 2 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        return np.moveaxis(images, -1, 1)
    if images.ndim == spatial_dims + 2:
        return images
    raise StageError(f"images have shape {images.shape}; expected (N, *spatial) or (N, C, *spatial) with {spatial_dims} spatial dims")


def read_arrays(path: Path, cfg) -> tuple[np.ndarray, pd.DataFrame]:
    """Load images (N, C, *spatial) and a table: index, patient_id, class, source_split."""
    if not path.is_file():
        raise StageError(f"ingest.input: array file {path} does not exist")
    ac = cfg.ingest.arrays
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        parts = [(p, f"{p}_{ac.images}", f"{p}_{ac.labels}") for p in SPLIT_PREFIXES if f"{p}_{ac.images}" in keys]
        if not parts:
            if ac.images not in keys:
                raise StageError(f"{path}: no key {ac.images!r} (or train_/val_/test_ prefixed); keys: {', '.join(sorted(keys))}")
            parts = [("", ac.images, ac.labels)]
        images, tables = [], []
        for prefix, ik, lk in parts:
            if lk not in keys:
                raise StageError(f"{path}: labels key {lk!r} missing (ingest.arrays.labels); keys: {', '.join(sorted(keys))}")
            img = _channels_first(z[ik], cfg.ingest.arrays.spatial_dims)
            lab = z[lk].reshape(len(img), -1)[:, 0]
            pid = z[ac.patient_id].astype(str) if ac.patient_id and ac.patient_id in z.files else None
            if ac.patient_id and pid is None:
                raise StageError(f"{path}: patient key {ac.patient_id!r} missing (ingest.arrays.patient_id)")
            n0 = sum(len(i) for i in images)
            images.append(img)
            tables.append(pd.DataFrame({
                "sample_id": [f"{prefix or 'img'}{i:06d}" for i in range(len(img))],
                "patient_id": pid if pid is not None else [f"{prefix or 'img'}{i:06d}" for i in range(len(img))],
                "class": lab,
                "source_split": prefix or "",
                "row": np.arange(n0, n0 + len(img)),
            }))
    return np.concatenate(images), pd.concat(tables, ignore_index=True)


def ingest(cfg: Config, run_dir: Path) -> StageResult:
    images, table = read_arrays(cfg.ingest.input, cfg)
    result = StageResult()
    finite = np.isfinite(images.reshape(len(images), -1)).all(1)
    for sid in table.loc[~finite, "sample_id"]:
        result.fail(f"image {sid}", f"{cfg.ingest.input}: image {sid} contains NaN or inf values; left out")
    ac = cfg.ingest.arrays
    cls = table["class"].to_numpy(float)
    label = np.full(len(table), -1)
    label[np.isin(cls, ac.normal_labels)] = 0
    anomalous = np.isin(cls, ac.anomaly_labels) if ac.anomaly_labels is not None else ~np.isin(cls, ac.normal_labels)
    label[anomalous] = 1
    keep = finite & (label >= 0)
    table = table.assign(label=label)[keep].reset_index(drop=True)
    images = images[keep]
    table["row"] = np.arange(len(table))
    io.write_npz(run_dir / ARRAYS_NPZ, images=images.astype(np.float32), sample_id=table["sample_id"].to_numpy(str))
    io.write_csv(run_dir / ARRAYS_CSV, table)
    result.counts = {"images": int(len(images)), "normal": int((table.label == 0).sum()), "anomalous": int((table.label == 1).sum()),
                     "left_out_by_label": int((label < 0).sum()), "non_finite": int((~finite).sum())}
    result.outputs = [run_dir / ARRAYS_NPZ, run_dir / ARRAYS_CSV]
    return result


def extract(cfg: Config, run_dir: Path, cubes_npz: str, samples_csv: str) -> StageResult:
    table = pd.read_csv(run_dir / ARRAYS_CSV, dtype={"sample_id": str, "patient_id": str, "source_split": str}, keep_default_na=False)
    with np.load(run_dir / ARRAYS_NPZ) as z:
        images = z["images"]
    size = cfg.extract.cube_size
    spatial = np.asarray(images.shape[2:])
    result = StageResult()
    if np.any(spatial < size):
        for sid in table["sample_id"]:
            result.fail(f"image {sid}", f"image {sid}: grid {tuple(spatial)} is smaller than extract.cube_size {size}")
        raise StageError(f"extract: images of size {tuple(spatial)} are smaller than extract.cube_size {size}")
    off = (spatial - size) // 2
    crop = images[(slice(None), slice(None), *[slice(o, o + size) for o in off])]
    samples = table.assign(kind="image", series_uid="", size=size)[["sample_id", "patient_id", "series_uid", "kind", "label", "class", "source_split", "size"]]
    io.write_npz(run_dir / cubes_npz, raw=crop, sample_id=samples["sample_id"].to_numpy(str))
    io.write_csv(run_dir / samples_csv, samples)
    result.counts = {"images": int(len(samples)), "normal": int((samples.label == 0).sum()), "anomalous": int((samples.label == 1).sum())}
    result.outputs = [run_dir / cubes_npz, run_dir / samples_csv]
    return result
