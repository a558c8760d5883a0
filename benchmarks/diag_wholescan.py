"""Diagnostic (issue 20; docs/BENCHMARK_NOTES.md, LIDC whole-scan, attempts 5 and 6):
does normalising the map by distance to the lung border move the nodules up, and how does a classical
dot-enhancement filter (Li et al. 2003) on the whole HU volume rank them (--blob)?
Reads finished fold runs; nothing is written to them."""

import glob
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluation.map_candidates import peaks, smooth_map
from preprocessing.lung import lung_region

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


def dot(x, region, sigmas):
    out = np.zeros(x.shape, np.float32)
    idx = np.nonzero(region)
    for s in sigmas:
        H = np.empty((len(idx[0]), 3, 3), np.float32)
        for a in range(3):
            for b in range(a, 3):
                order = [0, 0, 0]
                order[a] += 1
                order[b] += 1
                d = ndimage.gaussian_filter(x, s, order=order, mode="nearest")[idx] * s * s
                H[:, a, b] = d
                H[:, b, a] = d
        lam = np.linalg.eigvalsh(H)  # ascending: lam[:,0] most negative
        l1, l3 = lam[:, 0], lam[:, 2]
        v = np.where(l3 < 0, l3 * l3 / np.minimum(l1, -1e-6) * -1.0, 0.0).astype(np.float32)  # |l3|^2/|l1|
        out[idx] = np.maximum(out[idx], v)
    return out


def blob_check(root: str, nod: pd.DataFrame) -> None:
    """Attempt 6's first check: the dot filter on each test scan's whole HU volume (no windows), inside the lung region."""
    ROOT, NOD = Path(root), nod
    for fold in range(3):
        run = ROOT / "intensity" / f"fold{fold}"
        uid = Path(glob.glob(str(run / "overlays" / "*_anomaly.nii.gz"))[0]).name.split("_anomaly")[0]
        ct = sitk.ReadImage(str(run / "volumes" / f"{uid}.nii.gz"))
        hu = sitk.GetArrayFromImage(ct).astype(np.float32)
        sp = tuple(ct.GetSpacing()[::-1])
        region = lung_region(hu, sp, -400.0, 10.0, head_at_end=ct.GetDirection()[8] > 0)
        x = (np.clip(hu, -1000, 400) + 1000) / 1400
        own = NOD[NOD.series_uid == uid]
        nz = np.array([ct.TransformPhysicalPointToContinuousIndex(tuple(map(float, r)))[::-1] for r in own[["x_mm", "y_mm", "z_mm"]].to_numpy()])
        t = time.time()
        m = dot(x, region, [1.0, 1.5, 2.5, 4.0])
        dt = time.time() - t
        r, f = ranks(m, region, sp, nz)
        dist = ndimage.distance_transform_edt(region, sampling=sp).astype(np.float32)
        rd, _ = ranks(distnorm(m, region, dist), region, sp, nz)
        print(
            f"fold{fold} {own.nodule_id.str[-7:].tolist()} dot ranks {r} distnorm {rd}  ({dt:.0f} s)"
            f" top10 border {[int(dist[tuple(p)]) for p in f[:10]]}",
            flush=True,
        )


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root", help="the protocol's runs folder, e.g. runs/bench/lidc_whole_scan")
    ap.add_argument("--nodules", required=True, help="nodules_all.csv of the LIDC whole-scan data")
    ap.add_argument("--blob", action="store_true", help="attempt 6: the dot filter on the whole HU volumes instead")
    ap.add_argument("rows", nargs="*", default=["synth_generic_families", "intensity", "size"])
    args = ap.parse_args()
    NOD = pd.read_csv(args.nodules)
    if args.blob:
        blob_check(args.root, NOD)
    else:
        main(args.rows, args.root)
