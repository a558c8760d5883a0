"""Axial slices of a mapped CT's 10 highest candidates and of its annotated nodules, with the voxel map beside them.

Usage: python benchmarks/plot_wholescan_candidates.py RUN_DIR OUT.png

RUN_DIR is a run whose ``map`` stage mapped one CT series (e.g. a fold of configs/bench/lidc_wholescan.yaml).
Top row: the CT (window −1000…400 HU), 80 mm around the point; bottom row: the anomaly map there.
Titles: candidate rank and score, or nodule id, diameter and the map's percentile at its centre.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import SimpleITK as sitk  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    cands = pd.read_csv(args.run / "candidates.csv")
    uid = cands["series_uid"].iloc[0]
    ct = sitk.ReadImage(str(args.run / "volumes" / f"{uid}.nii.gz"))
    hu = sitk.GetArrayViewFromImage(ct)
    amap_img = sitk.ReadImage(str(args.run / "overlays" / f"{uid}_anomaly.nii.gz"))  # kept: the view borrows its buffer
    amap = sitk.GetArrayViewFromImage(amap_img)
    nodules = json.loads((args.run / "map_metrics.json").read_text())["nodules"]
    pts = [(f"c{r.rank} {r.score:.2f}", (r.x_mm, r.y_mm, r.z_mm)) for r in cands.head(args.top).itertuples()]
    pts += [(f"{n['nodule_id'][-2:]} {n.get('diameter_mm', 0):.0f} mm p{n['map_percentile']:.0f}", (n["x_mm"], n["y_mm"], n["z_mm"]))
            for n in nodules]
    fig, ax = plt.subplots(2, len(pts), figsize=(2.2 * len(pts), 4.6), squeeze=False)
    vmax = max(0.3, 0.8 * float(amap.max()))
    for i, (title, lps) in enumerate(pts):
        col, row, sl = ct.TransformPhysicalPointToIndex(lps)  # LPS mm → (i, j, k) of the CT grid
        box = (slice(max(0, row - 40), row + 40), slice(max(0, col - 40), col + 40))
        ax[0, i].imshow(hu[sl][box], cmap="gray", vmin=-1000, vmax=400)
        ax[1, i].imshow(amap[sl][box], cmap="hot", vmin=0, vmax=vmax)
        ax[0, i].set_title(title, fontsize=7)
        for a in ax[:, i]:
            a.plot(min(col, 40), min(row, 40), "c+")
            a.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=70)


if __name__ == "__main__":
    main()
