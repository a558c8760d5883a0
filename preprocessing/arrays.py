"""Array datasets: images already on a grid, from npz, IDX (MNIST) or CSV files.

``ingest`` reads ``ingest.input``: one file, or a folder with ``ingest.arrays.sources`` (several
files concatenated, each tagged with its ``source`` name). Formats, chosen by file name:

- ``.npz``: one images/labels pair (keys from ``ingest.arrays``), or split-prefixed keys
  (``train_images``, ``val_images``, ...) whose prefix is kept as ``source_split`` (MedMNIST);
  optional keys for patient IDs, per-image pixel spacing and extra columns (``keep``).
- IDX (``*-idx3-ubyte[.gz]`` with an ``*-idx1-ubyte[.gz]`` labels file): the MNIST format.
- ``.csv[.gz]``: one image per row, pixels in row-major order, the label in the last column.

Images become channel-first float32 ``(C, *spatial)`` (a trailing channel axis of 1 or 3 is moved
to the front). Images with NaN/inf are reported per item and dropped. Labels map to 0
(``normal_labels``), 1 (``anomaly_labels``, default every other label) or are left out. When a
pixel spacing is known (per image from the ``spacing`` key, or ``pixel_spacing_mm`` for all), each
image is resampled to ``ingest.spacing_mm`` (see :func:`preprocessing.resize.resample_to_spacing`),
so images of one dataset may differ in size: the ``grids/`` shards store them padded to each
shard's largest size (top-left aligned), with each image's valid ``grid_shape`` in ``arrays.csv``
(:mod:`preprocessing.grid_shards`).

``extract`` centre-crops every image to ``extract.cube_size`` (an image smaller than that is a
per-item error), writing the same ``cubes/`` shards / ``samples.csv`` contract as CT cubes
(one cube shard per grid shard, without geometry columns), so split, train, score and
evaluate are shared with the CT path.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import artifacts
from pipeline.core.errors import StageError
from pipeline.core.results import StageResult
from pipeline.core.schema import ArraySource, Config
from preprocessing.grid_shards import GRID_COLUMNS, GridShardWriter, iter_grid_shards, parse_shape
from preprocessing.resize import resample_to_spacing

SPLIT_PREFIXES = ("train", "val", "test")
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class _Part:
    """Images of one file (or one split of an npz) with their per-image table columns."""

    images: list[np.ndarray]  # each (C, *spatial)
    columns: dict[str, np.ndarray]  # sample_id, patient_id, class, source_split, source, keep keys...
    spacing: np.ndarray | None = None  # (N, dims) mm, when the file carries it
    extra: dict = field(default_factory=dict)


def _channels_first(images: np.ndarray, spatial_dims: int, where: str) -> np.ndarray:
    if images.ndim == spatial_dims + 1:
        return images[:, None]
    if images.ndim == spatial_dims + 2 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        return np.moveaxis(images, -1, 1)
    if images.ndim == spatial_dims + 2:
        return images
    raise StageError(f"{where}: images have shape {images.shape}; expected (N, *spatial) or (N, C, *spatial) "
                     f"with {spatial_dims} spatial dims (ingest.arrays.spatial_dims)")


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: 0, 0, dtype code, ndim, big-endian int32 dims, data).

    Written by hand because no library of the stack reads IDX (torchvision's reader would pull
    torchvision in for twenty lines); the header is checked against the file size.
    """
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise StageError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise StageError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">i4", ndim, 4).astype(int)
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    start = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - start != expected:
        raise StageError(f"{path}: IDX header says {tuple(dims)} ({expected} bytes of data) "
                         f"but the file holds {len(raw) - start}; truncated or corrupt")
    return np.frombuffer(raw, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def _ids(tag: str, n: int) -> np.ndarray:
    return np.array([f"{tag}{i:06d}" for i in range(n)])


def _read_npz(path: Path, cfg, source: str) -> list[_Part]:
    ac = cfg.ingest.arrays
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        parts = [(p, f"{p}_{ac.images}", f"{p}_{ac.labels}") for p in SPLIT_PREFIXES if f"{p}_{ac.images}" in keys]
        if not parts:
            if ac.images not in keys:
                raise StageError(f"{path}: no key {ac.images!r} (or train_/val_/test_ prefixed); "
                                 f"keys: {', '.join(sorted(keys))} (ingest.arrays.images)")
            parts = [("", ac.images, ac.labels)]
        out = []
        for prefix, ik, lk in parts:
            if lk not in keys:
                raise StageError(f"{path}: labels key {lk!r} missing (ingest.arrays.labels); keys: {', '.join(sorted(keys))}")
            img = _channels_first(z[ik], ac.spatial_dims, str(path))
            n = len(img)
            wanted = {"patient_id": ac.patient_id, "spacing": ac.spacing, **{k: k for k in ac.keep}}
            missing = [f"{k!r} ({what})" for what, k in wanted.items() if k and (f"{prefix}_{k}" if prefix else k) not in keys]
            if missing:
                raise StageError(f"{path}: key(s) {', '.join(missing)} missing; keys: {', '.join(sorted(keys))}")
            get = lambda k, prefix=prefix: z[f"{prefix}_{k}" if prefix else k]  # noqa: E731
            ids = _ids(f"{source}:" * bool(source) + (prefix or "img"), n)
            cols = {"sample_id": ids, "patient_id": get(ac.patient_id).astype(str) if ac.patient_id else ids,
                    "class": z[lk].reshape(n, -1)[:, 0].astype(float), "source_split": np.full(n, prefix), "source": np.full(n, source)}
            cols.update({k: get(k).reshape(n, -1)[:, 0] for k in ac.keep})
            spacing = None
            if ac.spacing:
                spacing = np.broadcast_to(get(ac.spacing).reshape(n, -1).astype(float), (n, ac.spatial_dims)).copy()
            out.append(_Part(list(img), cols, spacing))
    return out


def _read_idx_pair(path: Path, labels_path: Path | None, cfg, source: str) -> list[_Part]:
    if labels_path is None:
        raise StageError(f"{path}: IDX images need their labels file (ingest.arrays.sources[].labels_file)")
    img = _channels_first(read_idx(path), cfg.ingest.arrays.spatial_dims, str(path))
    lab = read_idx(labels_path).reshape(-1)
    if len(lab) != len(img):
        raise StageError(f"{labels_path}: {len(lab)} labels for {len(img)} images in {path.name}")
    ids = _ids(f"{source}:" * bool(source) + "img", len(img))
    return [_Part(list(img), {"sample_id": ids, "patient_id": ids, "class": lab.astype(float), "source_split": np.full(len(img), ""),
                              "source": np.full(len(img), source)})]


def _read_csv(path: Path, cfg, source: str) -> list[_Part]:
    ac = cfg.ingest.arrays
    try:
        table = pd.read_csv(path, header=None)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise StageError(f"{path}: cannot read CSV ({exc})") from None
    values = table.to_numpy()
    if not np.issubdtype(values.dtype, np.number):
        raise StageError(f"{path}: expected numbers only (pixels, then the label in the last column, no header)")
    pixels, lab = values[:, :-1].astype(np.float32), values[:, -1].astype(float)
    shape = list(ac.image_shape) if ac.image_shape else [int(round(pixels.shape[1] ** (1 / ac.spatial_dims)))] * ac.spatial_dims
    if int(np.prod(shape)) != pixels.shape[1]:
        raise StageError(f"{path}: rows hold {pixels.shape[1]} pixels, which is not the image shape {shape} (set ingest.arrays.image_shape)")
    img = pixels.reshape(len(pixels), 1, *shape)
    ids = _ids(f"{source}:" * bool(source) + "img", len(img))
    return [_Part(list(img), {"sample_id": ids, "patient_id": ids, "class": lab, "source_split": np.full(len(img), ""),
                              "source": np.full(len(img), source)})]


def _read_file(path: Path, labels_path: Path | None, cfg, source: str) -> list[_Part]:
    if not path.is_file():
        raise StageError(f"ingest.input: array file {path} does not exist")
    name = path.name.lower()
    if name.endswith(".npz"):
        return _read_npz(path, cfg, source)
    if name.endswith((".csv", ".csv.gz")):
        return _read_csv(path, cfg, source)
    if "idx" in name or name.endswith((".ubyte", ".ubyte.gz")):
        return _read_idx_pair(path, labels_path, cfg, source)
    raise StageError(f"{path}: unknown array format (expected .npz, IDX *-ubyte[.gz] or .csv[.gz])")


def read_arrays(cfg) -> list[_Part]:
    """Every part of the configured array dataset (one file, or ``ingest.arrays.sources``)."""
    root = Path(cfg.ingest.input)
    sources: list[ArraySource] = cfg.ingest.arrays.sources
    if not sources:
        return _read_file(root, None, cfg, "")
    if not root.is_dir():
        raise StageError(f"ingest.input: {root} must be a folder when ingest.arrays.sources lists files inside it")
    parts = []
    for i, src in enumerate(sources):
        parts += _read_file(root / src.file, root / src.labels_file if src.labels_file else None, cfg, src.name or f"source{i}")
    return parts


def _to_grid(image: np.ndarray, spacing: np.ndarray | None, cfg) -> np.ndarray:
    """An image on the ``ingest.spacing_mm`` grid when its spacing is known, else unchanged."""
    if spacing is None:
        return image.astype(np.float32)
    return resample_to_spacing(image, tuple(float(s) for s in spacing), cfg.ingest.spacing_mm, cfg.ingest.antialias_on)


def ingest(cfg: Config, run_dir: Path) -> StageResult:
    ac = cfg.ingest.arrays
    parts = read_arrays(cfg)
    columns = {k: np.concatenate([p.columns[k] for p in parts]) for k in parts[0].columns}
    table = pd.DataFrame(columns)
    if table["sample_id"].duplicated().any():
        raise StageError(f"ingest: duplicate sample IDs {table.loc[table['sample_id'].duplicated(), 'sample_id'].head(3).tolist()}; "
                         "give each source a distinct name")
    images = [im for p in parts for im in p.images]
    spacing = [s for p in parts for s in (p.spacing if p.spacing is not None else [None] * len(p.images))]
    if ac.pixel_spacing_mm is not None:
        spacing = [s if s is not None else np.full(ac.spatial_dims, ac.pixel_spacing_mm) for s in spacing]
    result = StageResult()
    finite = np.array([np.isfinite(im).all() for im in images])
    for sid in table.loc[~finite, "sample_id"]:
        result.fail(f"image {sid}", f"{cfg.ingest.input}: image {sid} contains NaN or inf values; left out")
    cls = table["class"].to_numpy(float)
    label = np.full(len(table), -1)
    label[np.isin(cls, ac.normal_labels)] = 0
    anomalous = np.isin(cls, ac.anomaly_labels) if ac.anomaly_labels is not None else ~np.isin(cls, ac.normal_labels)
    label[anomalous] = 1
    keep = np.flatnonzero(finite & (label >= 0))
    grids = [_to_grid(images[i], spacing[i], cfg) for i in keep]
    table = table.assign(label=label).iloc[keep].reset_index(drop=True)
    if any(s is not None for s in spacing):
        table["spacing_mm"] = [spacing_text(spacing[i]) for i in keep]
    result.outputs = write_arrays(run_dir, table, grids, ac.spatial_dims)
    result.counts = {"images": int(len(table)), "normal": int((table.label == 0).sum()), "anomalous": int((table.label == 1).sum()),
                     "left_out_by_label": int((label < 0).sum()), "non_finite": int((~finite).sum()),
                     "resampled": int(sum(spacing[i] is not None for i in keep))}
    return result


def spacing_text(spacing) -> str:
    """Pixel spacing (mm per axis) as written in ``arrays.csv``; empty when unknown."""
    return " ".join(f"{v:.6g}" for v in spacing) if spacing is not None else ""


def write_arrays(run_dir: Path, table: pd.DataFrame, grids: list[np.ndarray], spatial_dims: int) -> list[Path]:
    """Write the ``grids/`` shards and ``arrays.csv`` of images already in memory (array datasets).

    ``grids``: one channel-first float32 image ``(C, *spatial)`` per table row, already on the mm
    grid (:mod:`preprocessing.grid_shards`). Returns the shards and the table's path.
    """
    writer = GridShardWriter(run_dir, len(grids), spatial_dims)
    for i, g in enumerate(grids):
        writer.add(i, g)
    shards = writer.close()
    return [*shards, artifacts.write_table("arrays_table", run_dir, table.assign(**writer.columns(range(len(table)))))]


def _centre_crops(images: np.ndarray, shapes: list[tuple[int, ...]], size: int) -> np.ndarray:
    """The centre ``size`` crop of each padded image, given its valid shape (each at least ``size`` per axis)."""
    crops = np.empty((len(images), images.shape[1], *[size] * (images.ndim - 2)), np.float32)
    for j, shp in enumerate(shapes):
        off = [(n - size) // 2 for n in shp]
        crops[j] = images[(j, slice(None), *[slice(o, o + size) for o in off])]
    return crops


def extract(cfg: Config, run_dir: Path) -> StageResult:
    """Centre-crop every image to ``extract.cube_size`` → ``cubes/images-*.npy`` (one per grid shard) and
    ``samples.csv`` (no geometry columns); one grid shard is in memory at a time."""
    table = artifacts.read_arrays_table(run_dir)
    size, result = cfg.extract.cube_size, StageResult()
    extra = [c for c in table.columns if c not in ("sample_id", "patient_id", "label", "class", "source_split", "source", *GRID_COLUMNS)]
    parts, shards, small_total = [], [], 0
    for name, rows, images in iter_grid_shards(run_dir, table):
        shapes = [parse_shape(t) for t in rows["grid_shape"]]
        small = np.array([min(s) < size for s in shapes])
        for sid, shp in zip(rows["sample_id"].to_numpy()[small], [s for s, f in zip(shapes, small) if f]):
            result.fail(f"image {sid}", f"image {sid}: grid {tuple(shp)} is smaller than extract.cube_size {size}; left out")
        small_total += int(small.sum())
        keep = np.flatnonzero(~small)
        if not len(keep):
            continue
        shards.append(artifacts.write_cube_shard(run_dir, name, _centre_crops(images[keep], [shapes[k] for k in keep], size)))
        parts.append(rows.iloc[keep].assign(shard=name, shard_row=np.arange(len(keep))))
    artifacts.remove_stale_shards(run_dir, shards)
    if not parts:
        raise StageError(f"extract: every image is smaller than extract.cube_size {size}; see errors.csv")
    samples = pd.concat(parts).assign(kind="image", series_uid="", size=size)
    samples = samples[["sample_id", "patient_id", "series_uid", "kind", "label", "class", "source_split", "source", "size",
                       *extra, "shard", "shard_row"]].reset_index(drop=True)
    samples_path = artifacts.write_table("samples", run_dir, samples)
    result.counts = {"images": int(len(samples)), "normal": int((samples.label == 0).sum()), "anomalous": int((samples.label == 1).sum()),
                     "too_small": small_total}
    result.outputs = [*shards, samples_path]
    return result
