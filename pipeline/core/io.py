"""Atomic, deterministic file output and content hashing.

Every output is written to a temporary file in the destination folder and then renamed over the
final name (``os.replace`` is atomic on POSIX), so a killed run never leaves a half-written file
under a final name. Readers therefore see either the old file or the complete new one; temporary
files left by a killed process are removed by :func:`remove_stale_temps` when the run resumes.

A full disk must never pass silently: SimpleITK's NIfTI writer only prints ``NWAD: wrote only 0
of N bytes`` and returns, torch raises a ``RuntimeError``. So a library writer's temporary file
is checked before it is renamed (a ``.gz`` must decompress to its end), and any failure while
the destination file system is full becomes ``OSError(ENOSPC)``, which stops the run (see
:data:`FATAL_ERRNOS`) instead of being recorded as a bad item.

Outputs are byte-for-byte reproducible: ``npz`` members carry a fixed zip timestamp and torch
archives are serialised in memory (``torch.save`` to a path names the archive after the random
temporary file).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


_ROOTS: list[Path] = []  # the folders writes are confined to (innermost last); see confine()


@contextlib.contextmanager
def confine(root: str | Path) -> Iterator[Path]:
    """Within this block every writer of this module refuses a destination outside ``root``.

    The runner confines each run to its run directory, the benchmark publisher to its output
    folder; a path built from data (a UID, an ID, a file name from a CSV) therefore cannot write
    anywhere else, whatever it contains (``..``, an absolute path, a symlinked folder).
    """
    real = Path(root).resolve()
    _ROOTS.append(real)
    try:
        yield real
    finally:
        _ROOTS.pop()


class OutsideRunError(ValueError):
    """A write outside the folder the process is confined to (a bug or a hostile name, never retried)."""


def check_confined(dest: str | Path) -> None:
    """Raise :class:`OutsideRunError` when ``dest`` resolves outside the active :func:`confine` root."""
    if not _ROOTS:
        return
    root, real = _ROOTS[-1], Path(dest).resolve()
    if real != root and root not in real.parents:
        raise OutsideRunError(f"refused to write {dest}: it resolves to {real}, outside the run folder {root}")


@contextlib.contextmanager
def atomic_path(dest: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success rename it to ``dest``.

    ``suffix`` keeps the extension libraries use to pick a format (e.g. ``.nii.gz``). A ``dest``
    outside the active :func:`confine` root is refused before anything is created.
    """
    dest = Path(dest)
    check_confined(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(dest.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f"{TEMP_MARK}{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except OSError as exc:
        if exc.errno is None and disk_full(dest.parent):  # numpy's tofile reports a short write with no errno
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write)", str(dest)) from exc
        if exc.filename is None:  # a failed write() names no file: name the output
            raise OSError(exc.errno, exc.strerror, str(dest)) from exc
        raise
    except Exception as exc:  # a library writer that failed on a full disk says so in its own words
        if disk_full(dest.parent):
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({type(exc).__name__} while writing)", str(dest)) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


TEMP_MARK = ".tmp"
# Errors of the output side: the whole run stops (finished work is kept) rather than one item failing.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def disk_full(folder: Path) -> bool:
    """True when the file system holding ``folder`` has no free block left."""
    try:
        return shutil.disk_usage(folder).free == 0
    except OSError:
        return False


def remove_stale_temps(root: Path) -> list[Path]:
    """Delete temporary files that a killed process left under ``root``; returns them."""
    stale = [p for p in root.rglob(f".*{TEMP_MARK}*") if p.is_file() and TEMP_MARK in p.name]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _check_written(tmp: Path, dest: Path) -> None:
    """Catch a library writer that returned without error after a short write (full disk)."""
    try:
        if tmp.name.endswith(".gz"):
            with gzip.open(tmp, "rb") as f:
                while f.read(1 << 20):
                    pass
    except (EOFError, OSError, zlib.error) as exc:
        code = errno.ENOSPC if disk_full(dest.parent) else errno.EIO
        raise OSError(code, f"{os.strerror(code)}: the written file is incomplete ({exc})", str(dest)) from None
    if disk_full(dest.parent):
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (the file system filled up while writing)", str(dest))


def write_bytes(dest: str | Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | Path, text: str) -> None:
    write_bytes(dest, text.encode())


def write_json(dest: str | Path, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_csv(dest: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(dest) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(dest: str | Path, **arrays: np.ndarray) -> None:
    """Compressed ``.npz`` (read with ``np.load``): zlib level 1 and a fixed member timestamp.

    Level 1 because ``np.savez_compressed``'s level 6 took 26 s for 2,468 CT cubes (104 MB) against
    6 s at level 1 (105 MB), most of the extract stage; the fixed timestamp makes equal arrays give
    equal bytes (a resumed run is byte-identical to an uninterrupted one).
    """
    with npz_stream(dest) as z:
        for name, arr in arrays.items():
            z.put(name, arr)


class NpzStream:
    """An ``.npz`` being written member by member (see :func:`npz_stream`)."""

    def __init__(self, zf: zipfile.ZipFile) -> None:
        self.zf = zf

    def _member(self, name: str):
        info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
        info.compress_type = zipfile.ZIP_DEFLATED
        info._compresslevel = 1
        return self.zf.open(info, "w", force_zip64=True)

    def put(self, name: str, arr: np.ndarray) -> None:
        """Add a whole array."""
        with self._member(name) as f:
            np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)

    @contextlib.contextmanager
    def rows(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> Iterator[Callable[[np.ndarray], None]]:
        """Add an array of ``shape`` given a block of rows at a time: yields ``write(block)``. The bytes
        are those of :meth:`put` with the whole array; fewer or more rows than ``shape[0]`` is an error."""
        dtype, written = np.dtype(dtype), 0
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(int(n) for n in shape)}

        def write(block: np.ndarray) -> None:
            nonlocal written
            if block.shape[1:] != tuple(shape[1:]) or written + len(block) > shape[0]:
                raise ValueError(f"{name}: block of shape {block.shape} does not continue an array of shape {tuple(shape)} at row {written}")
            f.write(np.ascontiguousarray(block, dtype).tobytes())
            written += len(block)

        with self._member(name) as f:
            np.lib.format.write_array_header_1_0(f, header)
            yield write
            if written != shape[0]:
                raise ValueError(f"{name}: {written} rows written of {shape[0]}")


@contextlib.contextmanager
def npz_stream(dest: str | Path) -> Iterator[NpzStream]:
    """Write an ``.npz`` atomically, member by member, as :func:`write_npz` does (same bytes for the
    same arrays); :meth:`NpzStream.rows` streams a large member, so it never has to be in memory."""
    with atomic_path(dest, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            yield NpzStream(zf)


def write_npy(dest: str | Path, arr: np.ndarray) -> None:
    """Plain ``.npy`` (no pickles, no compression): equal arrays give equal bytes, and a row can be
    read back at its byte offset after the header without loading the file (``artifacts.read_cube_rows``)."""
    with atomic_path(dest, suffix=".npy") as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def write_with(dest: str | Path, writer: Callable[[Path], None]) -> None:
    """Atomically write ``dest`` with a library writer that takes a path (SimpleITK, matplotlib).

    The temporary file is checked (:func:`_check_written`) before it replaces ``dest``.
    """
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        writer(tmp)
        _check_written(tmp, dest)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
