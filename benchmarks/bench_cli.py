"""Whole-process cost of CLI commands: ``pipeline validate`` and ``pipeline ingest`` against the peer.

Each measurement is a fresh process timed by GNU ``/usr/bin/time`` (wall seconds and peak RSS),
so interpreter start-up and imports count, as a user sees them. The commands are interleaved
(validate, ingest, peer, validate, ...) over ``--repeat`` rounds after one warm-up round, and the
medians are compared: on a shared 2-core machine single runs vary by ±20 %.

- ``validate``: ``pipeline validate configs/ct_nodules_vae.yaml``;
- ``ingest``: ``pipeline ingest`` of the full LIDC-IDRI-0063 series (133 slices → 400×400×331 at 1 mm)
  into a fresh run folder;
- ``peer``: dicom2nifti's ``dicom_series_to_nifti`` of the same series, then a SimpleITK linear
  resample to 1 mm, int16, written with SimpleITK's own compression, in one Python process.

Usage (the peer needs ``pip install medanomaly[bench]``):

    python benchmarks/bench_cli.py --series ../shared/data/lidc_ct/LIDC-IDRI-0063 --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER = """
import sys
import dicom2nifti
import SimpleITK as sitk
series, out = sys.argv[1], sys.argv[2]
dicom2nifti.dicom_series_to_nifti(series, out + "/d2n.nii.gz", reorient_nifti=False)
img = sitk.ReadImage(out + "/d2n.nii.gz", sitk.sitkFloat32)
sp = img.GetSpacing()
size = [int((n - 1) * s / 1.0) + 1 for n, s in zip(img.GetSize(), sp)]
iso = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), [1.0] * 3, img.GetDirection(), -1024, sitk.sitkFloat32)
sitk.WriteImage(sitk.Cast(sitk.Round(iso), sitk.sitkInt16), out + "/d2n_1mm.nii.gz", useCompression=True)
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``cmd`` as a fresh process."""
    proc = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    wall, kb = proc.stderr.strip().splitlines()[-1].split()[1:]
    return float(wall), float(kb) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=Path, default=ROOT.parent / "shared" / "data" / "lidc_ct" / "LIDC-IDRI-0063")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cfg = str(ROOT / "configs" / "ct_nodules_vae.yaml")
    results: dict[str, list[tuple[float, float]]] = {"validate": [], "ingest": [], "peer": []}
    with tempfile.TemporaryDirectory() as td:
        for r in range(args.repeat + 1):
            runs = {
                "validate": [sys.executable, "-m", "pipeline.cli", "validate", cfg],
                "ingest": [sys.executable, "-m", "pipeline.cli", "ingest", cfg, "--set", f"ingest.input={args.series.resolve()}",
                           "--out", f"{td}/run{r}"],
                "peer": [sys.executable, "-c", PEER, str(args.series.resolve()), _fresh(Path(td) / f"peer{r}")],
            }
            for name, cmd in runs.items():
                m = timed(cmd)
                if r > 0:  # round 0 warms the file cache
                    results[name].append(m)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(m for _, m in v)) for k, v in results.items()}
    print(f"{'command':10s} {'median s':>9s} {'min s':>7s} {'peak MB':>8s}   (whole process, {args.repeat} interleaved rounds)")
    for k, v in results.items():
        print(f"{k:10s} {med[k][0]:9.2f} {min(w for w, _ in v):7.2f} {med[k][1]:8.0f}")
    ratios = sorted(i[0] / p[0] for i, p in zip(results["ingest"], results["peer"]))
    print(f"ingest / peer: {med['ingest'][0] / med['peer'][0]:.2f} (medians); per round {', '.join(f'{x:.2f}' for x in ratios)}")


def _fresh(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


if __name__ == "__main__":
    main()
