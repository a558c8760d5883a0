"""Wall time of the whole-scan map (stage ``map``) of one CT, and where it goes.

Runs :func:`evaluation.anomaly_map.map_run` on a copy of a finished run folder (one that has its
ingested volume, e.g. ``pipeline score --model RUN/model --input SERIES --out OUT``), once per
``--mc`` value, in this process with ``run.threads`` threads, and prints per setting: the stage's
wall time, the sweep's part (lung mask, dilation and the sliding windows), the windows scored and
skipped, and the rank correlation of the window score with the run's ``score.mc_samples`` (from the
map calibration, when the folder fits one). The machine's load average is printed with each row:
on a shared 2-core machine compare rows of one invocation, not absolute figures across days.

Usage:

    python benchmarks/bench_map.py OUT --mc 4 1 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a finished run folder with an ingested CT (config.yaml, volumes/)")
    ap.add_argument("--mc", type=int, nargs="+", default=[4, 1], help="map.mc_samples values to time")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    from evaluation import anomaly_map
    from models.catalog import MODELS
    from pipeline.core import artifacts
    from pipeline.core.config import load_config

    base = load_config(args.run_dir / "config.yaml", models=MODELS)
    print(f"{'mc':>3} {'stage s':>8} {'sweep s':>8} {'windows':>8} {'skipped':>8} {'load':>5}")
    for _ in range(args.repeat):
        for mc in args.mc:
            with tempfile.TemporaryDirectory() as tmp:
                run = Path(tmp) / "run"
                shutil.copytree(args.run_dir, run, ignore=shutil.ignore_patterns("overlays", "*.png", "report.html"))
                base.map.mc_samples = mc
                sweeps = []
                original = anomaly_map.sweep

                def timed(*a, _original=original, _sweeps=sweeps, **k):  # bound now (ruff B023), though used in this iteration only
                    out = _original(*a, **k)
                    _sweeps.append(out.seconds)
                    return out

                anomaly_map.sweep = timed
                t0 = time.perf_counter()
                result = anomaly_map.map_run(base, run)
                wall = time.perf_counter() - t0
                anomaly_map.sweep = original
                calib = artifacts.read_json("map_calibration", run) or {}
                print(f"{mc:>3} {wall:8.1f} {sum(sweeps):8.1f} {result.counts['windows']:>8} {result.counts['windows_outside_lung']:>8} "
                      f"{os.getloadavg()[0]:5.1f}  rho={calib.get('spearman_vs_score_mc_samples', float('nan')):.4f}")


if __name__ == "__main__":
    main()
