"""Peak memory of extract and train against the number of series: does it stay flat?

Makes ``N`` copies of the bundled sample series (``sample_data/ct/LIDC-IDRI-0063``, new Study,
Series and SOP Instance UIDs; the same pixels and geometry, so every copy yields the same cubes)
with a nodule table listing each copy's two nodules, then runs ``pipeline ingest``, ``extract``,
``split``, ``train``, ``score``, ``map`` and ``evaluate`` of ``configs/ct_nodules_vae.yaml`` (background
cubes enabled, as configured; ``--epochs`` epochs, ``--mc`` Monte-Carlo samples, 50 bootstrap rounds;
the whole-scan map disabled unless ``--map``, since it is per series and slow) as
fresh processes, one after the other, for each ``N``. Each process is measured by GNU
``/usr/bin/time`` (wall seconds, peak RSS), so imports count as a user sees them. Printed per
``N``: cubes, wall time and peak RSS of extract, train, score and evaluate, and the sizes on disk
of the volumes, the cubes (the ``cubes/`` shards, or an older version's ``cubes.npz``),
``samples.csv``, ``residuals.npz`` and the model folder.

Usage (one thread, one worker: the figures are those of one process):

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --n 1 20 --epochs 3 --mc 4

``--code DIR`` runs the pipeline of another checkout (e.g. an export of an older commit) on the
same corpora, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's packages, also when another checkout is installed (as bench_models.py)

from preprocessing.dicom_copy import copy_series  # noqa: E402

SAMPLE = ROOT / "sample_data" / "ct"
STAGES = ("ingest", "extract", "split", "train", "score", "map", "evaluate")
MEASURED = ("extract", "train", "score", "evaluate")


def make_corpus(folder: Path, n: int) -> tuple[Path, Path]:
    """``n`` copies of the sample series under ``folder/dicom`` and their nodule table; returns both paths."""
    with open(SAMPLE / "nodules.csv", newline="") as f:
        nodules = list(csv.DictReader(f))
    rows = []
    for k in range(n):
        uid = copy_series(SAMPLE / "LIDC-IDRI-0063", folder / "dicom" / f"copy{k:04d}")
        rows += [{**r, "series_uid": uid, "nodule_id": f"{r['nodule_id']}-c{k}"} for r in nodules]
    table = folder / "nodules.csv"
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "dicom", table


def timed(cmd: list[str], code: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``cmd`` as a fresh process running the pipeline of ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    wall, kb = proc.stderr.strip().splitlines()[-1].split()[1:]
    return float(wall), float(kb) / 1024


def du_mb(*paths: Path) -> float:
    """Total size (MB) of the files under ``paths`` (files or folders; absent ones count 0)."""
    total = 0
    for p in paths:
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else []
        total += sum(f.stat().st_size for f in files)
    return total / 1e6


def run_one(n: int, work: Path, code: Path, epochs: int, mc: int, map_on: bool = False) -> dict:
    """Build the corpus of ``n`` series and run the stages; returns the measurements."""
    dicom, nodules = make_corpus(work / f"corpus{n}", n)
    run = work / f"run{n}"
    sets = [f"ingest.input={dicom}", f"extract.nodules={nodules}", f"train.epochs={epochs}", "train.patience=1000",
            f"score.mc_samples={mc}", f"map.enabled={str(map_on).lower()}", "evaluate.bootstrap=50",
            "run.threads=1", "run.workers=1", "run.device=cpu"]
    row: dict = {"series": n}
    for stage in STAGES:
        cmd = [sys.executable, "-m", "pipeline.cli", stage, str(code / "configs" / "ct_nodules_vae.yaml"), "--out", str(run)]
        row[stage] = timed(cmd + [a for s in sets for a in ("--set", s)], code)
    with open(run / "samples.csv", newline="") as f:
        row["cubes"] = sum(1 for _ in csv.DictReader(f))
    row["disk"] = {"volumes": du_mb(run / "volumes"), "cubes": du_mb(run / "cubes", run / "cubes.npz"),
                   "samples.csv": du_mb(run / "samples.csv"), "residuals": du_mb(run / "residuals.npz"), "model": du_mb(run / "model")}
    return row


def report(rows: list[dict]) -> None:
    """The tables of measurements, and how much each stage's peak grew from the smallest N."""
    print("peak RSS (MB) and wall time (s) of each stage, as a fresh process")
    print(f"{'series':>6s} {'cubes':>6s} | " + " | ".join(f"{st:>8s} MB {'s':>6s}" for st in MEASURED))
    for r in rows:
        print(f"{r['series']:6d} {r['cubes']:6d} | " + " | ".join(f"{r[st][1]:11.0f} {r[st][0]:6.1f}" for st in MEASURED))
    print("sizes on disk (MB)")
    print(f"{'series':>6s} | " + " ".join(f"{k:>11s}" for k in rows[0]["disk"]))
    for r in rows:
        print(f"{r['series']:6d} | " + " ".join(f"{v:11.1f}" for v in r["disk"].values()))
    first, last = rows[0], rows[-1]
    more_cubes, more_disk = last["cubes"] - first["cubes"], last["disk"]["cubes"] - first["disk"]["cubes"]
    for stage in MEASURED:
        grow = last[stage][1] - first[stage][1]
        print(f"{stage}: peak RSS {first[stage][1]:.0f} MB at N={first['series']} → {last[stage][1]:.0f} MB at N={last['series']} "
              f"({grow:+.0f} MB for {more_cubes} more cubes, {more_disk:.0f} MB more of them on disk)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 20], help="numbers of series to measure")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--mc", type=int, default=4, help="score.mc_samples (the config's 100 makes scoring the longest part)")
    ap.add_argument("--map", action="store_true", help="run the whole-scan map stage too (per series, slow; measured as 'map')")
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose pipeline runs (default: this one)")
    ap.add_argument("--work", type=Path, default=None, help="keep the corpora and runs here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        work = args.work or Path(td)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for n in sorted(args.n):
            rows.append(run_one(n, work, args.code.resolve(), args.epochs, args.mc, args.map))
            peaks = ", ".join(f"{st} {rows[-1][st][1]:.0f} MB" for st in MEASURED)
            print(f"[bench_scale] N={n}: {peaks}", file=sys.stderr, flush=True)
        report(rows)


if __name__ == "__main__":
    main()
