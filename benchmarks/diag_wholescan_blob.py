"""Diagnostic (issue 20; docs/BENCHMARK_NOTES.md, LIDC whole-scan, attempt 6): a classical dot-enhancement filter (Li et al. 2003)
on the HU volume, inside the lung region.
How would a hand-made nodule filter rank the nodules?  Reads the fold runs' volumes only."""

import glob
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag_wholescan_border import distnorm, ranks

from evaluation.map_candidates import lung_region


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


ROOT, NOD = Path(sys.argv[1]), pd.read_csv(sys.argv[2])  # runs/bench/lidc_whole_scan, nodules_all.csv
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
