"""``pipeline bench --quick`` on the real benchmark data (slow: about 4 minutes on 2 quiet CPU cores).

Runs every protocol at reduced size through the CLI, as a user would, and checks that the
detectors that work on MNIST-9 and PneumoniaMNIST are far above chance. The thresholds come
from measured quick runs (docs/BENCHMARK_NOTES.md, "quick mode"), minus a margin; the runs are
deterministic on CPU for a given seed, so the margin only has to absorb library changes.
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, SHARED_DATA, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason=f"benchmark data not found at {SHARED_DATA}")]

# (protocol file, detector, score) → lowest acceptable AUROC: the quick run measured on 2026-11-30
# (docs/BENCHMARK_NOTES.md, "Quick mode") minus about 0.07. Only scores far above chance are checked.
FLOORS = {
    ("mnist_9", "VAE", "latent"): 0.69,  # measured 0.766
    ("mnist_9", "kNN-PCA", "knn"): 0.60,  # measured 0.676
    ("lidc_3d", "size", "size"): 0.64,  # measured 0.709
    ("lidc_2d", "size", "size"): 0.63,  # measured 0.700
    ("pneumoniamnist", "VAE", "elbo_ic"): 0.79,  # measured 0.857
    ("pneumoniamnist", "alpha-GAN", "disc"): 0.80,  # measured 0.873
    ("pneumoniamnist", "GEOM", "feat_knn"): 0.67,  # measured 0.741
    ("pneumoniamnist", "input complexity", "intensity"): 0.80,  # measured 0.863
    ("pneumoniamnist", "ensemble (synth + input complexity)", "ensemble"): 0.76,  # measured 0.830
}


def test_quick_benchmark_runs_every_protocol_and_beats_chance(tmp_path):
    configs = sorted(str(p) for p in (ROOT / "configs" / "bench").glob("*.yaml"))
    proc = run_cli("bench", *configs, "--data-root", str(SHARED_DATA), "--quick", "--jobs", "2", "--out", str(tmp_path), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "BENCHMARKS.md").read_text()
    for title in ("## MNIST-9", "## LIDC-3D", "## LIDC-2D", "## PneumoniaMNIST", "## Chest X-ray 224", "## HAM10000", "## Contamination",
                  "## LIDC whole-scan", "### Whole-scan FROC (pooled over the folds)"):
        assert title in md
    assert "QUICK mode" in md
    docs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "bench").glob("*.json")}
    assert len(docs) == len(configs) and all(not d["failures"] for d in docs.values())
    for (proto, det, score), floor in FLOORS.items():
        row = next(r for r in docs[proto]["rows"] if r["detector"] == det and r["score"] == score and not r["view"])
        assert row["auroc_mean"] >= floor, (proto, det, score, row["auroc_mean"])
    for d in docs.values():
        assert (tmp_path / "bench" / f"{d['slug']}_roc.png").stat().st_size > 10_000
    ws = docs["lidc_whole_scan"]["wholescan"]  # the map of the held-out scan, scored by FROC
    assert {w["detector"] for w in ws} == {d["detector"] for d in docs["lidc_whole_scan"]["rows"]}
    assert all(w["scans"] == 1 and w["nodules"] >= 1 and 0 <= w["pooled"]["cpm"] <= 1 for w in ws)
