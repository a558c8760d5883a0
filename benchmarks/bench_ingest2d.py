"""2D ingest speed and peak memory against the number of images: images/s, and does RSS stay flat?

Builds a folder of ``k`` copies of a real image folder (symbolic links with new names, so the
JPEG decoding is real and nothing is cached by name) and its labels CSV (each copy with its own
image and lesion IDs), then runs ``pipeline ingest`` and ``pipeline extract`` of a config as fresh
processes under GNU ``/usr/bin/time`` (wall seconds, peak RSS, imports included) for each ``k``.
Default: ``configs/dermatology.yaml`` on HAM10000 (10,015 JPEGs of 200x150 RGB, resized to a
128 px short side), ``run.workers`` 2 as configured.

    python benchmarks/bench_ingest2d.py --images ../shared/data/ham10000/images \\
        --labels ../shared/data/ham10000/metadata.csv --copies 1 4

Printed per ``k``: images, ingest and extract wall time, images/s and peak RSS (MB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_scale import timed  # noqa: E402


def make_copies(images: Path, labels: Path, out: Path, k: int, id_column: str, group_column: str) -> tuple[Path, Path]:
    """``k`` linked copies of the images named ``c<j>_<name>`` and their labels CSV; returns (folder, CSV)."""
    table = pd.read_csv(labels, dtype=str, keep_default_na=False)
    folder = out / f"images{k}"
    folder.mkdir(parents=True)
    files = sorted(p for p in images.iterdir() if p.is_file())
    rows = []
    for j in range(k):
        for src in files:
            (folder / f"c{j}_{src.name}").symlink_to(src.resolve())
        rows.append(table.assign(**{id_column: f"c{j}_" + table[id_column], group_column: f"c{j}_" + table[group_column]}))
    csv = out / f"labels{k}.csv"
    pd.concat(rows).to_csv(csv, index=False)
    return folder, csv


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "dermatology.yaml")
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--id-column", default="image_id")
    ap.add_argument("--group-column", default="lesion_id")
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--set", action="append", default=[], help="extra config override KEY=VALUE")
    args = ap.parse_args(argv)
    print(f"{'images':>7s} | {'ingest s':>8s} {'img/s':>6s} {'MB':>6s} | {'extract s':>9s} {'MB':>6s}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ingest2d-") as tmp:
        for k in args.copies:
            folder, csv = make_copies(args.images, args.labels, Path(tmp), k, args.id_column, args.group_column)
            run = Path(tmp) / f"run{k}"
            sets = [f"ingest.input={folder}", f"ingest.images.labels={csv}", *args.set]
            row = {}
            for stage in ("ingest", "extract"):
                cmd = [sys.executable, "-m", "pipeline.cli", stage, str(args.config), "--out", str(run)]
                row[stage] = timed(cmd + [a for s in sets for a in ("--set", s)], ROOT)
            n = len(pd.read_csv(run / "arrays.csv", usecols=["sample_id"]))
            (wi, mi), (we, me) = row["ingest"], row["extract"]
            print(f"{n:7d} | {wi:8.1f} {n / wi:6.0f} {mi:6.0f} | {we:9.1f} {me:6.0f}", flush=True)


if __name__ == "__main__":
    main()
