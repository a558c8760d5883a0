"""Peak memory of DICOM header discovery (ingest's first step) over many files.

Builds a folder of N symbolic links to real CT slices (the bundled LIDC sample, or ``--source``)
plus one hostile file: a real slice carrying a private OB element of ``--big-mb`` MB before its
pixel data. Each measurement runs in a fresh process: resident memory after the imports, then
``preprocessing.dicom_series.discover`` over the folder, then the peak (``VmHWM``). For
comparison, the hostile file is also read with plain ``pydicom.dcmread(stop_before_pixels=True)``.

    python benchmarks/bench_headers.py --files 1000 10000 --big-mb 200
    python benchmarks/bench_headers.py --files 2000 --big-mb 64 --json     # one JSON line per count
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "ct" / "LIDC-IDRI-0063"

_CHILD = r"""
import json, sys, time
from pathlib import Path
def status_kb(key):  # VmHWM, not ru_maxrss: after fork+exec ru_maxrss still holds the parent's peak
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
mode, target = sys.argv[1], Path(sys.argv[2])
import pydicom
from preprocessing.dicom_series import discover
base, t0 = status_kb("VmRSS"), time.perf_counter()
if mode == "discover":
    found = discover(target)
    n = {"headers": sum(len(v) for v in found.series.values()), "errors": len(found.errors)}
else:
    pydicom.dcmread(target, stop_before_pixels=True)
    n = {}
peak = status_kb("VmHWM")
print(json.dumps({**n, "seconds": round(time.perf_counter() - t0, 2), "baseline_mb": round(base / 1024, 1),
                  "peak_mb": round(peak / 1024, 1), "growth_mb": round((peak - base) / 1024, 1)}))
"""


def hostile_file(source: Path, dest: Path, big_mb: int) -> Path:
    """A real slice with a ``big_mb`` MB private OB element (0009,1010) ahead of its pixel data."""
    ds = pydicom.dcmread(source)
    ds.private_block(0x0009, "medanomaly bench", create=True).add_new(0x10, "OB", np.zeros(big_mb << 20, np.uint8).tobytes())
    ds.save_as(dest)
    return dest


def make_tree(root: Path, n: int, sources: list[Path]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.symlink(sources[i % len(sources)], root / f"{i:06d}.dcm")
    return root


def measure(mode: str, target: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(target)], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--big-mb", type=int, default=200, help="size of the hostile file's large element (0: none)")
    ap.add_argument("--source", type=Path, default=SAMPLE, help="folder of real DICOM slices to link to")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sources = sorted(p.resolve() for p in args.source.rglob("*.dcm"))
    with tempfile.TemporaryDirectory() as tmp:
        big = hostile_file(sources[0], Path(tmp) / "hostile.dcm", args.big_mb) if args.big_mb else None
        for n in args.files:
            tree = make_tree(Path(tmp) / f"n{n}", n, sources)
            if big:
                os.symlink(big, tree / "hostile.dcm")
            row = {"files": n + bool(big), "big_element_mb": args.big_mb, **measure("discover", tree)}
            if big:
                row["plain_pydicom_growth_mb"] = measure("plain", big)["growth_mb"]
            if args.json:
                print(json.dumps(row))
            else:
                print(f"{row['files']:>7} files ({row['headers']} headers, {row['errors']} errors): {row['seconds']:6.1f} s, "
                      f"RSS {row['baseline_mb']:.0f} MB after imports -> peak {row['peak_mb']:.0f} MB (+{row['growth_mb']:.1f} MB)"
                      + (f"; plain dcmread(stop_before_pixels) of the {args.big_mb} MB-element file: "
                         f"+{row['plain_pydicom_growth_mb']:.0f} MB" if big else ""))


if __name__ == "__main__":
    main()
