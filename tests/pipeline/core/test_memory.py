"""pipeline.core.memory: the fixed mmap threshold that lets freed cube buffers go back to the OS (glibc)."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest
from conftest import ROOT

# In a fresh interpreter: free one 6 MB block (glibc then raises its dynamic threshold above 6 MB), allocate
# another and report whether it was served by mmap (mallinfo2().hblks counts the mmapped blocks in use).
PROBE = """
import ctypes, sys
from pipeline.core.memory import fix_mmap_threshold
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype, libc.free.argtypes = MallInfo2, ctypes.c_void_p, [ctypes.c_void_p]
taken = fix_mmap_threshold() if sys.argv[1] == "fix" else None
libc.free(libc.malloc(6 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(6 << 20)
print(taken, libc.mallinfo2().hblks > before)
libc.free(block)
"""

GLIBC = platform.libc_ver()[0] == "glibc" and tuple(int(p) for p in platform.libc_ver()[1].split(".")[:2]) >= (2, 33)


def _probe(mode: str) -> tuple[str, str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    taken, mmapped = proc.stdout.split()
    return taken, mmapped


@pytest.mark.skipif(not GLIBC, reason="mallopt/mallinfo2 are glibc >= 2.33 features; elsewhere fix_mmap_threshold returns False")
def test_fixed_threshold_keeps_large_blocks_on_mmap_after_a_free():
    assert _probe("default") == ("None", "False")  # glibc's dynamic threshold moved the second block onto the heap
    assert _probe("fix") == ("True", "True")
