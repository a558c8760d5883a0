"""NIfTI output: SimpleITK writes the header and geometry, ISA-L's igzip compresses.

Every NIfTI of a run (ingested CT volumes, overlays) goes through :func:`write_nifti`, so the
files are atomic (:func:`pipeline.core.io.atomic_path`), confined to the run folder, checked for
short writes on a full disk, and byte-identical for identical images.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from isal import igzip

from pipeline.core import io


def write_nifti(dest: str | Path, image, level: int = 1) -> None:
    """Atomically write a SimpleITK image as ``.nii.gz``: SimpleITK writes the NIfTI (so the header
    and geometry are SimpleITK's), ISA-L's igzip compresses it at ``level`` (0-3).

    SimpleITK's own gzip (zlib) took 1.8 s for a 400×400×331 int16 CT on one core; igzip level 1
    takes 0.33 s for a 7% larger file (docs/PERFORMANCE.md). ``mtime=0`` and an empty name make the
    bytes depend on the image only.
    """
    with io.atomic_path(dest, suffix=".nii.gz") as tmp:
        # the uncompressed file goes to the system temp folder (a random name, removed in any case):
        # the output disk then needs room for the .gz only
        fd, raw_name = tempfile.mkstemp(suffix=".nii")
        os.close(fd)
        raw = Path(raw_name)
        try:
            sitk.WriteImage(image, str(raw), useCompression=False)
            _check_nifti_size(raw, dest)  # SimpleITK returns normally after a short write on a full disk

            def compress() -> None:
                with open(raw, "rb") as src, open(tmp, "wb") as f, \
                        igzip.GzipFile(filename="", fileobj=f, mode="wb", compresslevel=level, mtime=0) as gz:
                    shutil.copyfileobj(src, gz, 1 << 22)

            # In a thread of its own: ISA-L's AVX-512 code leaves the calling thread's vector
            # registers in a state that made SimpleITK's resampling in that thread 2-3× slower
            # afterwards (AMD EPYC; 0.45 s → 1.3 s per LIDC series). The thread ends with the call.
            with ThreadPoolExecutor(max_workers=1) as pool:
                pool.submit(compress).result()
        finally:
            raw.unlink(missing_ok=True)


def _check_nifti_size(raw: Path, dest: Path) -> None:
    """An uncompressed NIfTI must hold its header's offset plus every voxel."""
    hdr = nib.load(str(raw)).header
    need = int(hdr.get_data_offset()) + int(np.prod(hdr.get_data_shape())) * hdr.get_data_dtype().itemsize
    have = raw.stat().st_size
    if have < need:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write: {have} of {need} bytes)", str(dest))
