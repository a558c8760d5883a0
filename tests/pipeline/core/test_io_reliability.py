"""Atomic writers: byte-reproducible npz/torch, full-disk detection, stale temporary files, fatal errors."""

from __future__ import annotations

import errno
import gzip
import time

import numpy as np
import pytest

from pipeline.core import io
from pipeline.core.engine import map_items, usable_cores


def test_npz_and_torch_outputs_are_byte_reproducible(tmp_path, monkeypatch):
    import torch

    from models.checkpoint import write_torch

    arrays = {"raw": np.arange(24, dtype=np.int16).reshape(2, 3, 4), "sample_id": np.array(["a", "b"])}
    io.write_npz(tmp_path / "a.npz", **arrays)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3 * 3600)  # "hours later" (zip stamps have 2 s steps), without waiting
    io.write_npz(tmp_path / "b.npz", **arrays)
    monkeypatch.undo()
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as z:
        assert np.array_equal(z["raw"], arrays["raw"]) and list(z["sample_id"]) == ["a", "b"]
    obj = {"w": torch.arange(5.0), "config": {"seed": 0}}
    write_torch(tmp_path / "a.pt", obj)
    write_torch(tmp_path / "sub" / "b.pt", obj)  # another name and folder
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt")["w"], obj["w"])


def test_a_short_gzip_write_is_caught_before_the_rename(tmp_path):
    def short_writer(tmp):  # what SimpleITK's NIfTI writer leaves on a full disk, without raising
        tmp.write_bytes(gzip.compress(np.random.default_rng(0).bytes(100_000))[:5000])

    with pytest.raises(OSError) as exc:
        io.write_with(tmp_path / "v.nii.gz", short_writer)
    assert exc.value.errno in (errno.EIO, errno.ENOSPC) and exc.value.filename == str(tmp_path / "v.nii.gz")
    assert list(tmp_path.iterdir()) == []  # neither the final name nor the temporary file


def test_library_errors_on_a_full_disk_become_enospc(tmp_path, monkeypatch):
    def torch_like(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    monkeypatch.setattr(io, "disk_full", lambda folder: True)
    with pytest.raises(OSError) as exc:
        io.write_with(tmp_path / "m.pt", torch_like)
    assert exc.value.errno == errno.ENOSPC and "m.pt" in exc.value.filename
    monkeypatch.setattr(io, "disk_full", lambda folder: False)
    with pytest.raises(RuntimeError):  # with space left it stays the library's own error
        io.write_with(tmp_path / "m.pt", torch_like)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / "volumes").mkdir()
    stale = [tmp_path / ".cubes.npz.abc123.tmp.npz", tmp_path / "volumes" / ".x.nii.gz.q1w2.tmp.nii.gz"]
    for p in stale:
        p.write_bytes(b"half")
    keep = [tmp_path / "cubes.npz", tmp_path / ".hidden"]
    for p in keep:
        p.write_bytes(b"ok")
    assert sorted(io.remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def _fail(code: int):
    raise OSError(code, "simulated")


@pytest.mark.parametrize("code", sorted(io.FATAL_ERRNOS))
def test_a_full_or_read_only_output_stops_the_batch(code):
    with pytest.raises(OSError):
        list(map_items(lambda item: _fail(code), [1, 2]))


def test_other_os_errors_stay_item_errors():
    results = list(map_items(lambda item: _fail(errno.EACCES), [1, 2]))
    assert [ok for _, ok, _ in results] == [False, False]
    assert "Permission denied" in results[0][2] or "simulated" in results[0][2]


def _threads_and_square(x: int) -> tuple[int, int]:
    import SimpleITK as sitk

    return sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), x * x


def test_pool_workers_share_the_cores_and_give_the_same_results():
    """Each of 2 pool workers gets half the cores for SimpleITK (no 2×2 threads on 2 cores); the
    results equal those of the in-process path."""

    serial = {k: res[1] for k, ok, res in map_items(_threads_and_square, [1, 2, 3, 4], workers=1)}
    pooled = list(map_items(_threads_and_square, [1, 2, 3, 4], workers=2))
    assert all(ok for _, ok, _ in pooled)
    assert {k: res[1] for k, _, res in pooled} == serial
    assert {res[0] for _, _, res in pooled} == {max(1, usable_cores() // 2)}


def test_nifti_compression_runs_outside_the_calling_thread(tmp_path, monkeypatch):
    """ISA-L must not run in the caller's thread: afterwards SimpleITK resampling in that thread
    was 2-3× slower (preprocessing/nifti.py:write_nifti)."""
    import threading

    import SimpleITK as sitk
    from isal import igzip

    from preprocessing.nifti import write_nifti

    seen = []
    real = igzip.GzipFile

    def spy(*args, **kwargs):
        seen.append(threading.current_thread() is threading.main_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(igzip, "GzipFile", spy)
    img = sitk.Image(8, 9, 10, sitk.sitkInt16)
    img.SetSpacing((0.7, 0.8, 2.5))
    write_nifti(tmp_path / "v.nii.gz", img)
    assert seen == [False]
    back = sitk.ReadImage(str(tmp_path / "v.nii.gz"))
    assert back.GetSize() == img.GetSize() and np.allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-6)  # NIfTI stores float32
