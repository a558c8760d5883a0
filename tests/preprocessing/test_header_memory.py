"""Header discovery keeps bounded memory: thousands of real headers plus one file with a huge element."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_discovery_memory_is_bounded():
    proc = subprocess.run([sys.executable, "benchmarks/bench_headers.py", "--files", "2000", "--big-mb", "64", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["headers"] == 2001 and row["errors"] == 0  # the hostile file is a valid slice and is read
    assert row["plain_pydicom_growth_mb"] >= 60  # the big element is really there: a plain header read loads it
    assert row["growth_mb"] < 20, row  # ~1.5 KB per header; the 64 MB element is skipped, not read
