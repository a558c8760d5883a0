"""Process memory: keep the peak of the streaming stages independent of how many batches they read.

glibc serves an allocation below its mmap threshold from the heap, and raises that threshold (up to
32 MiB) each time a larger block it had mmapped is freed. The stages read their cubes in batches
(the post-training fit: 256 cubes, buffers of 16–32 MB), so after the first batch such buffers come
from the heap, where small objects that outlive them pin the freed space: the peak RSS of the
train stage grew by ~70 MB between 5 and 40 series (``benchmarks/bench_scale.py``). A fixed
threshold of 4 MiB sends every buffer of that size to mmap, so it returns to the system when freed,
while the training loop's many small allocations stay on the heap (measured: no slower; extract
within the noise). Elsewhere than glibc this is a no-op.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 4 << 20


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of ``nbytes`` and more by mmap, with no dynamic adjustment; True when the C library took it."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols, or one without mallopt (macOS)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, nbytes))
