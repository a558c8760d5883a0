"""Shared test helpers: repository paths, the shared real data location, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CT = ROOT / "sample_data" / "ct"
SHARED_DATA = Path(os.environ.get("MEDANOMALY_SHARED_DATA", ROOT.parent / "shared" / "data"))
LIDC_SERIES = SHARED_DATA / "lidc_ct" / "LIDC-IDRI-0063"
LIDC_NODULES = SHARED_DATA / "lidc_ct" / "nodules.csv"

needs_shared = pytest.mark.skipif(not LIDC_SERIES.is_dir(), reason=f"real LIDC series not found at {LIDC_SERIES} (../shared/data is absent)")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``pipeline`` as a user would (a fresh process), capturing output."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout)
