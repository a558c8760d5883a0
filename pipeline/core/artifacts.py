"""The run-directory contract: the one place that names, reads and writes each file of a run.

A run directory holds what the stages write (``docs/ARCHITECTURE.md`` shows the table). Every
file is an :class:`Artifact` with a path pattern relative to the run directory (or, for the
model files, relative to a model folder, which may live outside any run: ``pipeline score
--model DIR``). Readers and writers for the tables and arrays shared between stages are here too,
so a stage never reads another stage's files by a literal name.

Names that come from data are untrusted: a SeriesInstanceUID becomes a file name only when it is
a valid DICOM UI value (digits and dots, at most 64 characters, no empty component); any other
UID is stored as ``series-<first 16 hex digits of its SHA-256>`` and the original stays in
``series.csv`` (:func:`series_stem`). Every path an artifact resolves to is checked to stay inside
its root (:func:`inside`), and the writers in :mod:`pipeline.core.io` refuse anything outside
the run directory they are confined to.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Sequence

import numpy as np

from pipeline.core import io
from pipeline.core.errors import StageError

if TYPE_CHECKING:
    import pandas as pd

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
UID_MAX = 64


def is_dicom_uid(uid: str) -> bool:
    """True for a valid DICOM UI value: components of digits (no leading zero) joined by dots, ≤ 64 characters."""
    return isinstance(uid, str) and len(uid) <= UID_MAX and bool(UID_RE.match(uid))


def series_stem(uid: str) -> str:
    """The file-name stem of a series: the UID itself when valid, else ``series-<hash>`` (see the module docstring)."""
    if is_dicom_uid(uid):
        return uid
    return "series-" + hashlib.sha256(str(uid).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def safe_component(text: str, limit: int = 80) -> str:
    """A file-name-safe component from free text (a sample ID of an image file may hold separators)."""
    text = re.sub(r"\.(png|jpe?g|tiff?|dcm)$", "", str(text), flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit] or "sample"


def inside(root: Path, rel: str | Path) -> Path:
    """``root / rel``, refused (:class:`StageError`) when it would leave ``root`` (absolute, ``..``, symlinked away)."""
    root = Path(root)
    target = root / rel
    real_root = root.resolve()
    real = target.resolve()
    if real != real_root and real_root not in real.parents:
        raise StageError(f"refused path {target}: it resolves to {real}, outside {real_root}")
    return target


@dataclass(frozen=True)
class Artifact:
    """One file of the run-directory contract: its pattern, the stage that writes it, what it holds."""

    name: str
    pattern: str  # relative to the run directory (``model/...`` files: relative to a model folder)
    stage: str
    doc: str

    def path(self, root: Path, /, **keys: str) -> Path:
        """The file under ``root``; a ``series`` key is turned into its safe stem, other keys made safe."""
        safe = {k: (series_stem(v) if k == "series" else v if k == "rank" else safe_component(v)) for k, v in keys.items()}
        return inside(root, self.pattern.format(**safe))


# Images of a 2D/array dataset per shard (grids/ and cubes/): 1,024 images of 224x224 float32 are 205 MB,
# the memory ingest and extract hold at a time.
IMAGES_PER_SHARD = 1024


def _declare(*items: Artifact) -> dict[str, Artifact]:
    return {a.name: a for a in items}


ARTIFACTS: dict[str, Artifact] = _declare(
    Artifact("config", "config.yaml", "runner", "the resolved config of the last invocation"),
    Artifact("manifest", "manifest.json", "runner", "per stage: fingerprint, inputs, output hashes, counts, errors, wall time, peak memory"),
    Artifact("errors", "errors.csv", "runner", "one line per failed item: stage, item, message"),
    Artifact("ignored", "ignored.csv", "runner",
             "one line per input left out on purpose (not an image: XML, CSV, DICOMDIR, SR ...): stage, item, reason"),
    Artifact("warnings", "warnings.csv", "runner", "library warnings raised while reading an input, once each: stage, item, warning"),
    Artifact("lock", "run.lock", "runner", "PID, host and start of the process using the run directory"),
    Artifact("series", "series.csv", "ingest", "one row per ingested CT series: IDs, original geometry, volume path"),
    Artifact("volume", "volumes/{series}.nii.gz", "ingest", "the CT in HU, int16, resampled to ingest.spacing_mm, LPS geometry kept"),
    Artifact("ingest_record", "ingest/done/{series}.json", "ingest", "a finished series' row and input key (item-level resume)"),
    Artifact("grids", "grids/{shard}.npy", "ingest",
             "2D/array datasets: the images on their grid, (n, C, *spatial) float32 padded (top-left) to the shard's largest; "
             f"images-<k>, {IMAGES_PER_SHARD:,} each"),
    Artifact("arrays_table", "arrays.csv", "ingest", "2D/array datasets: one row per image, with its grid shard, row and shape"),
    Artifact("cubes", "cubes/{shard}.npy", "extract",
             "raw (n, C, *spatial) patches in stored units; a plain .npy per series, named by its safe stem "
             "(arrays: images-<k>, one per grid shard)"),
    Artifact("samples", "samples.csv", "extract",
             "one row per patch: IDs, label, class, centre and voxel→LPS affine of cubes, its shard and row there"),
    Artifact("splits", "splits.csv", "split", "train / val / test / buffer / unused per sample, fold, group"),
    Artifact("model_dir", "model", "train", "the model folder (everything pipeline score --model needs)"),
    Artifact("scores", "scores.csv", "score", "one column per score (higher = more anomalous), p_value, flagged"),
    Artifact("residuals", "residuals.npz", "score", "residual maps (float16) of the scored patches, their offset in the cube; 2D: reconstructions"),
    Artifact("calibration", "calibration.json", "score", "the primary score's null distribution on normal validation data"),
    Artifact("anomaly_map", "overlays/{series}_anomaly.nii.gz", "map",
             "voxel-wise anomaly map of the whole scan (residual, or a detector's predicted map), float32, the CT's geometry"),
    Artifact("anomaly_p", "overlays/{series}_anomaly_p.nii.gz", "map",
             "window score map as p-values on normal validation windows (1 outside the lung)"),
    Artifact("series_markups", "overlays/{series}_candidates.mrk.json", "map", "the series' candidates as a 3D Slicer markups file (LPS)"),
    Artifact("candidates", "candidates.csv", "map",
             "CT: voxel-map maxima in the lung: LPS mm, ijk, score, p, size, nearest nodule, hit; 2D: per image, row, column, mm, score, p, size"),
    Artifact("markups", "candidates.mrk.json", "map", "all candidates as 3D Slicer markups (one point list per series, LPS)"),
    Artifact("image_map", "maps/{sample}_anomaly.nii.gz", "map",
             "2D: the whole-image voxel map (residual, or a detector's map), float32, on the image's ingested grid with its pixel spacing"),
    Artifact("image_grid", "maps/{sample}_image.nii.gz", "map", "2D: the ingested image the map was computed on, the same geometry"),
    Artifact("map_images", "map_images.csv", "map", "2D: one row per mapped image: label, map maximum, window maximum, smallest p, seconds"),
    Artifact("map_png", "maps/{sample}_anomaly.png", "evaluate", "2D: image and its map overlaid, with the candidates, for each gallery case"),
    Artifact("map_calibration", "map_calibration.json", "map", "the window score's null distribution on normal validation windows"),
    Artifact("map_metrics", "map_metrics.json", "map", "per nodule: nearest candidate, map value; FROC and CPM, pooled and per scan"),
    Artifact("metrics", "metrics.json", "evaluate", "AUROC with CI, AUPRC, sensitivity at fixed specificity, LR protocol, per score"),
    Artifact("report", "report.html", "evaluate", "one self-contained page: config, data, errors, metrics, figures, galleries, manifest"),
    Artifact("figure", "{name}.png", "evaluate",
             "roc, roc_band, pr, score_density, gallery_most_anomalous, gallery_least_anomalous; GAN-family models: "
             "gan_samples, gan_search, gan_search_matches, gan_recon"),
    Artifact("overlay_residual", "overlays/{series}_residual.nii.gz", "evaluate",
             "absolute residual (x − reconstruction) on the CT grid, the maximum where cubes overlap"),
    Artifact("overlay_score", "overlays/{series}_score.nii.gz", "evaluate", "the primary score painted over each cube on the CT grid"),
    Artifact("overlay_nodules", "overlays/{series}_nodules.nii.gz", "evaluate", "a small labelled ball at each nodule centre"),
    Artifact("overlay_png", "overlays/{tag}{rank}_{sample}.png", "evaluate",
             "2D: image, reconstruction and residual side by side, for the top and some normal cases"),
)

# Files of a model folder (``<run>/model/`` or any folder given to ``pipeline score --model``).
MODEL_FILES: dict[str, Artifact] = _declare(
    Artifact("weights", "model.pt", "train", "the detector's state dict (tensors only; loaded with weights_only=True)"),
    Artifact("meta", "model.json", "train", "model name, parameters, input shape, normalisation, selection epoch, training config"),
    Artifact("model_manifest", "manifest.json", "train", "SHA-256 of model.pt and model.json, checked before loading"),
    Artifact("curves", "curves.csv", "train", "training and validation loss per epoch"),
    Artifact("curves_plot", "curves.png", "train", "the curves as a figure"),
    Artifact("train_state", "train_state.pt", "train", "weights, optimisers and history of the last epoch (resume; removed at the end)"),
)


def path(artifact: str, root: Path, /, **keys: str) -> Path:
    """Path of run-directory artifact ``artifact`` under ``root``."""
    return ARTIFACTS[artifact].path(root, **keys)


def model_dir(run_dir: Path) -> Path:
    return path("model_dir", run_dir)


def model_file(name: str, folder: Path) -> Path:
    """Path of model-folder file ``name`` (``weights``, ``meta``, ...) inside ``folder``."""
    return MODEL_FILES[name].path(folder)


# --------------------------------------------------------------------------------------------
# Tables and arrays shared between stages
# --------------------------------------------------------------------------------------------

# Columns read as text (IDs): pandas would otherwise turn "0063" into 63.
_TEXT = {"patient_id": str, "series_uid": str, "study_uid": str, "sample_id": str, "nodule_id": str,
         "source_split": str, "source": str, "group": str, "shard": str}


def _read_csv(name: str, run_dir: Path, hint: str, **kwargs: Any) -> "pd.DataFrame":
    import pandas as pd  # pandas (and pyarrow with it, ~130 MB) loads when a table is read, not when the CLI starts

    p = path(name, run_dir)
    if not p.exists():
        raise StageError(f"{p} not found: {hint}")
    return pd.read_csv(p, dtype=_TEXT, **kwargs)


def _only(columns: Sequence[str] | None):
    """pandas ``usecols`` keeping ``columns`` (all when None); a missing one is left for the caller to name."""
    return None if columns is None else (lambda c, keep=frozenset(columns): c in keep)


def write_table(name: str, run_dir: Path, table: "pd.DataFrame") -> Path:
    """Write a table artifact (``series``, ``samples``, ``splits``, ``scores``, ``arrays_table``); returns its path."""
    p = path(name, run_dir)
    io.write_csv(p, table)
    return p


def read_series(run_dir: Path) -> "pd.DataFrame":
    return _read_csv("series", run_dir, "run the ingest stage first")


def read_samples(run_dir: Path, columns: Sequence[str] | None = None) -> "pd.DataFrame":
    """``samples.csv`` (only ``columns`` when given: a table of millions of samples is large)."""
    table = _read_csv("samples", run_dir, "run the extract stage first", usecols=_only(columns))
    return table.fillna({c: "" for c in ("series_uid", "nodule_id", "source_split", "source") if c in table.columns})


def read_splits(run_dir: Path, columns: Sequence[str] | None = None) -> "pd.DataFrame":
    return _read_csv("splits", run_dir, "run the split stage first", usecols=_only(columns))


def read_scores(run_dir: Path) -> "pd.DataFrame":
    return _read_csv("scores", run_dir, "run the score stage first").fillna({"series_uid": ""})


def read_arrays_table(run_dir: Path) -> "pd.DataFrame":
    return _read_csv("arrays_table", run_dir, "run the ingest stage first", keep_default_na=False)


def read_npz_member(name: str, run_dir: Path, member: str, hint: str) -> np.ndarray:
    """One member of an ``.npz`` artifact, loaded (the others are not read)."""
    p = path(name, run_dir)
    if not p.exists():
        raise StageError(f"{p} not found: {hint}")
    with np.load(p, allow_pickle=False) as z:
        return z[member]


class NpzRows:
    """Rows of one (N, ...) member of an ``.npz`` artifact, read forward from its compressed stream:
    memory is that of the rows asked for, never the whole member. Asking for a row before the last
    one read starts the stream again, so callers ask in row order. ``None`` members: see :meth:`has`."""

    SKIP = 64  # rows read at a time while skipping

    def __init__(self, name: str, run_dir: Path, member: str, hint: str) -> None:
        self.p, self.member = path(name, run_dir), f"{member}.npy"
        if not self.p.exists():
            raise StageError(f"{self.p} not found: {hint}")
        self.zf = zipfile.ZipFile(self.p)
        self.f: BinaryIO | None = None
        self.shape: tuple[int, ...] = ()
        if self.has(member):
            self._rewind()

    def has(self, member: str) -> bool:
        return f"{member}.npy" in self.zf.namelist()

    def _rewind(self) -> None:
        if self.f is not None:
            self.f.close()
        self.f = self.zf.open(self.member)
        self.shape, self.dtype, _ = _npy_layout(self.f, self.p)
        self.row_bytes, self.pos = self.dtype.itemsize * int(np.prod(self.shape[1:])), 0

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _next(self, n: int) -> np.ndarray:
        buf = self.f.read(n * self.row_bytes)
        if len(buf) != n * self.row_bytes:
            raise StageError(f"{self.p}: {self.member} is truncated at row {self.pos}")
        self.pos += n
        return np.frombuffer(buf, self.dtype).reshape(n, *self.shape[1:])

    def read(self, rows: Sequence[int]) -> np.ndarray:
        """The given rows (any order; read in row order), as an array."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        last = -1, -1
        for i in np.argsort(rows, kind="stable"):
            r = int(rows[i])
            if not 0 <= r < self.shape[0]:
                raise StageError(f"{self.p}: row {r} of {self.member} requested, it holds {self.shape[0]}")
            if r == last[0]:  # asked twice
                out[i] = out[last[1]]
                continue
            if r < self.pos:
                self._rewind()
            while self.pos < r:
                self._next(min(self.SKIP, r - self.pos))
            out[i], last = self._next(1)[0], (r, i)
        return out

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        self.zf.close()

    def __enter__(self) -> "NpzRows":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_npz(name: str, run_dir: Path, hint: str) -> dict[str, np.ndarray]:
    """Every member of an ``.npz`` artifact, loaded (no pickles)."""
    p = path(name, run_dir)
    if not p.exists():
        raise StageError(f"{p} not found: {hint}")
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# Where each sample's cube is: samples.csv names the shard (a file stem under cubes/) and the row in it.
SHARD_COLUMNS = ("shard", "shard_row")


def image_shard(index: int) -> str:
    """The shard of the ``index``-th image of an array dataset (``IMAGES_PER_SHARD`` images per shard)."""
    return f"images-{index // IMAGES_PER_SHARD:05d}"


def write_cube_shard(run_dir: Path, shard: str, raw: np.ndarray) -> Path:
    """Write one shard ``cubes/<shard>.npy`` (a series' safe stem, or :func:`image_shard`); returns its path."""
    p = path("cubes", run_dir, shard=shard)
    io.write_npy(p, raw)
    return p


def remove_stale_shards(run_dir: Path, keep: Sequence[Path], artifact: str = "cubes") -> None:
    """Delete shards of an earlier run of the stage that this one did not write (another config, fewer series)."""
    folder = path(artifact, run_dir, shard="x").parent
    kept = {Path(p).name for p in keep}
    for p in folder.glob("*.npy") if folder.is_dir() else ():
        if p.name not in kept:
            p.unlink()


def _npy_layout(f: BinaryIO, p: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an open ``.npy`` file, from its header alone."""
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except ValueError as exc:
        raise StageError(f"{p}: not a cube shard ({exc}); run the extract stage again") from None
    if fortran or dtype.hasobject or not shape:
        raise StageError(f"{p}: not a cube shard (shape {shape}, dtype {dtype}); run the extract stage again")
    return shape, dtype, f.tell()


def _read_rows(f: BinaryIO, p: Path, n_rows: int, offset: int, rows: np.ndarray, out: list[np.ndarray]) -> None:
    """Read ``rows`` of an open shard into the arrays ``out`` (one per row), in file order, each at its byte offset."""
    for i in np.argsort(rows, kind="stable"):
        r = int(rows[i])
        if not 0 <= r < n_rows:
            raise StageError(f"{p}: row {r} requested, the shard holds {n_rows}; run the extract stage again")
        buf = memoryview(out[i]).cast("B")
        f.seek(offset + r * len(buf))
        if f.readinto(buf) != len(buf):
            raise StageError(f"{p}: truncated at row {r}; run the extract stage again")


def read_cube_rows(run_dir: Path, shards: Sequence[str], rows: Sequence[int], artifact: str = "cubes") -> np.ndarray:
    """Raw cubes of the given samples, in the order given: sample i is row ``rows[i]`` of shard ``shards[i]``
    (of ``artifact``: ``cubes``, or ``grids`` for the ingested 2D images).

    Each shard is opened once and only the requested rows are read, at their byte offset after the
    ``.npy`` header: no shard is loaded whole and no memory map stays alive (mapped pages would count
    toward the resident memory), so the memory used is the result's. No rows give shape ``(0,)``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    names, which = np.unique(np.asarray(shards, dtype=str), return_inverse=True)
    out: np.ndarray | None = None
    for k, name in enumerate(names):
        p = path(artifact, run_dir, shard=name)
        if not p.exists():
            raise StageError(f"{p} not found: run the {ARTIFACTS[artifact].stage} stage first")
        pos = np.flatnonzero(which.ravel() == k)
        with open(p, "rb", buffering=0) as f:
            shape, dtype, offset = _npy_layout(f, p)
            if out is None:
                out = np.empty((len(rows), *shape[1:]), dtype)
            elif (tuple(shape[1:]), dtype) != (out.shape[1:], out.dtype):
                raise StageError(f"{p}: cubes of shape {shape[1:]} {dtype}, other shards hold {out.shape[1:]} {out.dtype}")
            _read_rows(f, p, shape[0], offset, rows[pos], [out[i] for i in pos])
    return out if out is not None else np.zeros((0,), np.float32)


def read_raw_cubes(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(sample_ids, cubes)`` of every sample, in ``samples.csv`` order (HU for CT, source units for arrays/images).

    Loads every cube: for tests and small runs. The stages read the samples they need with :func:`read_cube_rows`.
    """
    samples = read_samples(run_dir)
    check_shard_columns(samples, run_dir)
    return samples["sample_id"].to_numpy(str), read_cube_rows(run_dir, samples["shard"], samples["shard_row"])


def check_shard_columns(samples: "pd.DataFrame", run_dir: Path) -> None:
    """Refuse a samples table without the shard columns (an extract of a version before sharding)."""
    missing = [c for c in SHARD_COLUMNS if c not in samples.columns]
    if missing:
        raise StageError(f"{path('samples', run_dir)} has no {', '.join(missing)} column (written before cubes were sharded); "
                         "run the extract stage again (pipeline extract --force)")


def read_json(name: str, run_dir: Path) -> dict | None:
    """A JSON artifact, or ``None`` when it does not exist."""
    p = path(name, run_dir)
    return json.loads(p.read_text()) if p.exists() else None


def write_json(name: str, run_dir: Path, obj: Any) -> Path:
    p = path(name, run_dir)
    io.write_json(p, obj)
    return p
