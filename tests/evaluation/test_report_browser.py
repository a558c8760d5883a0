"""report.html in a real headless browser (Debian's Chromium): it loads, no image is broken, AUROC shows.

Skipped with a reason when Chromium is not installed (.ci/run installs it with apt-get).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import ROOT, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")


def test_report_renders_with_images_and_auroc(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("run", str(ROOT / "configs" / "ct_nodules_vae.yaml"), "--out", str(out), "--set", "train.epochs=2",
                   "--set", "score.mc_samples=4", "--set", "evaluate.bootstrap=100")
    assert proc.returncode == 0, proc.stderr
    report = out / "report.html"
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-broken-images="0"' in body, body
    n_images = int(re.search(r'data-images="(\d+)"', body).group(1))
    assert n_images >= 6  # ROC, band, PR, density, training curves, two galleries
    headline = re.search(r'id="headline">([^<]*)<', dom).group(1)
    assert re.match(r"AUROC \d\.\d{3} \(95% CI", headline), headline
