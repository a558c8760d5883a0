"""Regenerate ``sample_data/xray`` (real chest X-rays as PNG + labels CSV) from PneumoniaMNIST.

Draws images from the official MedMNIST splits with a fixed seed and writes each as an 8-bit
greyscale PNG, unchanged (28x28 pixels), plus ``labels.csv`` with the columns the bundled
``configs/xray.yaml`` reads: ``image`` (path under the folder), ``patient_id`` (MedMNIST has
no patient IDs, so each image is its own), ``label`` (normal | pneumonia) and ``split`` (the
official split it came from).

Usage:
  python sample_data/make_xray_sample.py PNEUMONIAMNIST_NPZ [OUT_DIR]
      [--train N] [--val N] [--test-normal N] [--test-pneumonia N] [--seed S]
Defaults give the bundled sample. The tests use the same script for larger real subsets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

OUT = Path(__file__).resolve().parent / "xray"
NAMES = {0: "normal", 1: "pneumonia"}


def export(npz: Path, out: Path, train: int, val: int, test_normal: int, test_pneumonia: int, seed: int = 0) -> pd.DataFrame:
    """Write the PNGs and labels.csv; returns the labels table. Training and validation images
    are normals only (what the pipeline trains on); the test set holds both classes."""
    rng = np.random.default_rng(seed)
    rows = []
    with np.load(npz) as z:
        draws = [("train", 0, train), ("val", 0, val), ("test", 0, test_normal), ("test", 1, test_pneumonia)]
        for split, label, n in draws:
            images, labels = z[f"{split}_images"], z[f"{split}_labels"].reshape(-1)
            pool = np.flatnonzero(labels == label)
            if n > len(pool):
                raise SystemExit(f"{npz}: asked for {n} {NAMES[label]} images from {split}, only {len(pool)} exist")
            for idx in np.sort(rng.choice(pool, n, replace=False)):
                name = f"images/{split}_{idx:04d}.png"
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[idx].astype(np.uint8)).save(out / name, optimize=True)
                rows.append({"image": name, "patient_id": f"{split}_{idx:04d}", "label": NAMES[label], "split": split})
    table = pd.DataFrame(rows)
    table.to_csv(out / "labels.csv", index=False)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("npz", type=Path)
    p.add_argument("out", type=Path, nargs="?", default=OUT)
    p.add_argument("--train", type=int, default=300)
    p.add_argument("--val", type=int, default=60)
    p.add_argument("--test-normal", type=int, default=60)
    p.add_argument("--test-pneumonia", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    table = export(a.npz, a.out, a.train, a.val, a.test_normal, a.test_pneumonia, a.seed)
    print(f"wrote {len(table)} images and labels.csv to {a.out}")


if __name__ == "__main__":
    main()
