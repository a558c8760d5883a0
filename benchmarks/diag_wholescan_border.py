"""Diagnostic (issue 20; docs/BENCHMARK_NOTES.md, LIDC whole-scan, attempt 5):
does normalising the map by distance to the lung border move the nodules up?
Reads finished fold runs; nothing is written to them."""

import glob
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluation.map_candidates import lung_region, peaks, smooth_map

NOD = pd.DataFrame()  # set by main from --nodules
BINS = np.array([0, 2, 4, 6, 9, 13, 18, 25, 35, 1e9])


def ranks(values, region, sp, nod_zyx, nms=15.0, max_n=100, hit=5.0):
    found = peaks(values, region, sp, nms, max_n)
    out = []
    for p in nod_zyx:
        d = np.linalg.norm((found - p) * np.asarray(sp), axis=1) if len(found) else np.array([1e9])
        hits = np.where(d <= hit)[0]
        out.append(int(hits[0]) + 1 if len(hits) else None)
    return out, found


def distnorm(s, region, dist):
    z = np.full(s.shape, -np.inf, np.float32)
    b = np.digitize(dist, BINS) - 1
    for k in range(len(BINS) - 1):
        m = region & (b == k)
        if m.sum() < 1000:
            continue
        v = s[m]
        med = np.median(v)
        hi = np.quantile(v, 0.99)
        z[m] = (v - med) / max(hi - med, 1e-6)
    return z


def main(rows, root: str):
    nod = NOD
    for row in rows:
        for fold in range(3):
            run = Path(root) / row / f"fold{fold}"
            amap = glob.glob(str(run / "overlays" / "*_anomaly.nii.gz"))
            if not amap:
                continue
            uid = Path(amap[0]).name.split("_anomaly")[0]
            ct = sitk.ReadImage(str(run / "volumes" / f"{uid}.nii.gz"))
            hu = sitk.GetArrayFromImage(ct)
            sp = tuple(ct.GetSpacing()[::-1])
            vox = sitk.GetArrayFromImage(sitk.ReadImage(amap[0]))
            region = lung_region(hu, sp, -400.0, 10.0, head_at_end=ct.GetDirection()[8] > 0)
            own = nod[nod.series_uid == uid]
            nz = np.array([ct.TransformPhysicalPointToContinuousIndex(tuple(map(float, r)))[::-1] for r in own[["x_mm", "y_mm", "z_mm"]].to_numpy()])
            dist = ndimage.distance_transform_edt(region, sampling=sp).astype(np.float32)
            ndist = [float(dist[tuple(np.rint(p).astype(int))]) for p in nz]
            s = smooth_map(vox, sp, 2.0)
            r_raw, f_raw = ranks(s, region, sp, nz)
            z = distnorm(s, region, dist)
            r_dn, f_dn = ranks(z, region, sp, nz)
            r_er, _ = ranks(s, region & (dist > 4), sp, nz)
            fd = [float(dist[tuple(p)]) for p in f_raw[:10]]
            fdn = [float(dist[tuple(p)]) for p in f_dn[:10]]
            print(
                f"{row} fold{fold} {own.nodule_id.str[-7:].tolist()} diam {own.diameter_mm.round(1).tolist()} border_mm {np.round(ndist, 1).tolist()}"
            )
            print(
                f"   raw {r_raw}  distnorm {r_dn}  erode4 {r_er}  | top10 border dist raw {np.round(fd, 0).tolist()} dn {np.round(fdn, 0).tolist()}",
                flush=True,
            )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root", help="the protocol's runs folder, e.g. runs/bench/lidc_whole_scan")
    ap.add_argument("--nodules", required=True, help="nodules_all.csv of the LIDC whole-scan data")
    ap.add_argument("rows", nargs="*", default=["synth_generic_families", "intensity", "size"])
    args = ap.parse_args()
    NOD = pd.read_csv(args.nodules)
    main(args.rows, args.root)
