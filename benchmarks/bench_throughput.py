"""Throughput and peak memory of ingest, extract, train and score at 1 and 2 workers, and our
DICOM → 1 mm NIfTI ingest against two peers, measured in the same run.

    python benchmarks/bench_throughput.py                       # everything, on ../shared/data's LIDC series
    python benchmarks/bench_throughput.py --parts peer --repeat 7
    python benchmarks/bench_throughput.py --parts ingest,extract --copies 4

Parts (``--parts``, default all):

- ``peer``: one series (``--series``, default the 133-slice LIDC-IDRI-0063) to a 1 mm int16
  ``.nii.gz``, three ways, interleaved ``--repeat`` times in one process (2 SimpleITK threads):
  **ours** (the ingest stage: pydicom header walk and validation, SimpleITK read, linear
  resampling, rounding, SimpleITK NIfTI + igzip), the **floor** (SimpleITK alone:
  ``GetGDCMSeriesFileNames``, ``ImageSeriesReader``, ``Resample`` to 1 mm straight to int16,
  ``WriteImage`` with compression) and **dicom2nifti** (``dicom_series_to_nifti`` without
  reorientation, then SimpleITK read, the same resampling and write). A fourth row, the floor
  with our igzip NIfTI writer, isolates our own overhead (headers, validation, rounding).
  Reports min and median seconds and the ratios of the medians.
- ``ingest``: ``--copies`` copies of the series with new UIDs (pydicom ``generate_uid``), ingested
  by the ingest stage with ``run.workers`` 1 and 2 (series/s).
- ``extract``: those volumes → nodule and background cubes (series/s and cubes/s).
- ``train``: one process with 2 torch threads vs DDP with 2 gloo processes × 1 thread
  (``torchrun``), the default 3D VAE on 28³ patches of the extracted cubes (samples/s).
- ``score``: the default 3D VAE, ELBO with K = 100: one process with 2 threads vs 2 worker
  processes × 1 thread, each scoring half of the cubes (cubes/s).

Every measurement except ``peer`` runs in a fresh subprocess and reports its wall time and peak
RSS: the largest of the measuring process and its (waited-for) children, in MiB. Timings on a
shared machine are noisy: the load average is printed; compare figures from the same run.
Needs the ``bench`` extra for the dicom2nifti peer: ``pip install medanomaly[bench]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, also when another checkout is installed (as bench_models.py)
DEFAULT_SERIES = ROOT.parent / "shared" / "data" / "lidc_ct" / "LIDC-IDRI-0063"
DEFAULT_NODULES = DEFAULT_SERIES.parent / "nodules.csv"


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (core-seconds)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _config(work: Path, workers: int, threads: int = 2, **sections):
    from models.catalog import MODELS
    from pipeline.core.config import validate

    raw = {"run": {"workers": workers, "threads": threads, "device": "cpu"},
           "ingest": {"input": str(work / "copies")},
           "extract": {"nodules": str(work / "nodules.csv"), "cube_size": 32, "nodule_label": "anomaly",
                       "background": {"enabled": True, "stride_mm": 16, "min_distance_mm": 32, "lung_fraction": 0.5}}}
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return validate(raw, base_dir=work, models=MODELS)


# ------------------------------------------------------------------------------------------
# Peer comparison (one process, interleaved)
# ------------------------------------------------------------------------------------------


def ours(series: Path, out: Path) -> None:
    from pipeline.stages.ingest import run

    run(_config(out, 1, ingest={"input": str(series)}), out)


def _sitk_read(series: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    return reader.Execute()


def _resample_1mm_int16(image):
    """Plain SimpleITK: linear resampling to 1 mm on the same origin/direction, straight to int16."""
    import SimpleITK as sitk

    size = [int((n - 1) * s) + 1 for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [1.0] * 3, image.GetDirection(), -1024, sitk.sitkInt16)


def floor(series: Path, out: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(_resample_1mm_int16(_sitk_read(series)), str(out / "floor.nii.gz"), useCompression=True)


def floor_igzip(series: Path, out: Path) -> None:
    """The floor with our NIfTI writer instead of SimpleITK's gzip: what is left is our own overhead."""
    from preprocessing.nifti import write_nifti

    write_nifti(out / "floor.nii.gz", _resample_1mm_int16(_sitk_read(series)))


def dicom2nifti_resample(series: Path, out: Path) -> None:
    import dicom2nifti
    import SimpleITK as sitk

    dicom2nifti.dicom_series_to_nifti(str(series), str(out / "d2n.nii.gz"), reorient_nifti=False)
    iso = _resample_1mm_int16(sitk.ReadImage(str(out / "d2n.nii.gz")))
    sitk.WriteImage(iso, str(out / "d2n_1mm.nii.gz"), useCompression=True)


def ours_breakdown(series: Path, out: Path) -> dict[str, float]:
    """Seconds per step of our ingest of one series (where the time goes)."""
    import SimpleITK as sitk

    from preprocessing.dicom_series import discover, read_volume, validate_series
    from preprocessing.nifti import write_nifti
    from preprocessing.resample import resample_isotropic

    t = [time.perf_counter()]
    groups = discover(series).series
    info = validate_series(next(iter(groups.values())))
    t.append(time.perf_counter())
    image = read_volume(info)
    t.append(time.perf_counter())
    iso = resample_isotropic(image, 1.0)
    t.append(time.perf_counter())
    hu = sitk.Cast(sitk.Round(iso), sitk.sitkInt16)
    t.append(time.perf_counter())
    write_nifti(out / "x.nii.gz", hu)
    t.append(time.perf_counter())
    names = ("headers (pydicom) + validation", "pixel read (SimpleITK/GDCM)", "resample to 1 mm", "round + cast int16", "write .nii.gz (igzip)")
    return {n: b - a for n, a, b in zip(names, t, t[1:])}


def bench_peer(series: Path, repeat: int) -> None:
    import SimpleITK as sitk

    try:
        import dicom2nifti  # noqa: F401
        peers = {"ours": ours, "floor": floor, "floor + igzip writer": floor_igzip, "dicom2nifti": dicom2nifti_resample}
    except ImportError:
        print("dicom2nifti is not installed (pip install medanomaly[bench]); comparing with the floor only")
        peers = {"ours": ours, "floor": floor, "floor + igzip writer": floor_igzip}
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    times: dict[str, list[float]] = {k: [] for k in peers}
    cpu: dict[str, list[float]] = {k: [] for k in peers}
    for r in range(repeat + 1):  # the first round warms the page cache and imports; not counted
        for name, fn in peers.items():
            with tempfile.TemporaryDirectory() as d:
                t0, c0 = time.perf_counter(), time.process_time()
                fn(series, Path(d))
                if r:
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
    n = len(list(series.iterdir()))
    print(f"\n## Peer comparison: {series.name} ({n} files) → 1 mm int16 .nii.gz, {repeat} interleaved repeats, 2 SimpleITK threads")
    print("| method | min s | median s | median / floor | min / floor | median CPU s | CPU / floor |")
    print("|---|---|---|---|---|---|---|")
    med_floor, min_floor, cpu_floor = statistics.median(times["floor"]), min(times["floor"]), statistics.median(cpu["floor"])
    for name, ts in times.items():
        c = statistics.median(cpu[name])
        print(f"| {name} | {min(ts):.2f} | {statistics.median(ts):.2f} | {statistics.median(ts) / med_floor:.2f} | {min(ts) / min_floor:.2f} "
              f"| {c:.2f} | {c / cpu_floor:.2f} |")
    with tempfile.TemporaryDirectory() as d:
        steps = ours_breakdown(series, Path(d))
    print("\nours, per step: " + ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()))


# ------------------------------------------------------------------------------------------
# Per-stage throughput (one subprocess per measurement)
# ------------------------------------------------------------------------------------------


def prepare(series: Path, nodules: Path, work: Path, copies: int) -> None:
    """``copies`` copies of ``series`` with new UIDs and a nodule table naming each copy."""
    import pandas as pd

    from preprocessing.dicom_copy import copy_series

    if (work / "nodules.csv").exists() and len(list((work / "copies").iterdir())) == copies:
        return
    shutil.rmtree(work / "copies", ignore_errors=True)
    table = pd.read_csv(nodules, dtype=str)
    src_uid = None
    rows = []
    for i in range(copies):
        uid = copy_series(series, work / "copies" / f"copy{i:03d}")
        if src_uid is None:
            import pydicom

            src_uid = str(pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
        mine = table[table["series_uid"] == src_uid].copy()
        mine["series_uid"] = uid
        mine["nodule_id"] = mine["nodule_id"] + f"-c{i}"
        rows.append(mine)
    pd.concat(rows).to_csv(work / "nodules.csv", index=False)


def one(part: str, workers: int, work: Path) -> dict:
    """One measurement in this (fresh) process; returns the JSON record."""
    out = work / f"{part}_w{workers}"
    if part == "ingest":
        from pipeline.stages.ingest import run

        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        res = run(_config(work, workers), out)
        return {"items": res.counts["series_ingested"], "seconds": time.perf_counter() - t0}
    if part == "extract":
        from pipeline.stages.extract import run

        src = work / "ingest_w1"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        shutil.copy(src / "series.csv", out / "series.csv")
        os.symlink(src / "volumes", out / "volumes")
        t0 = time.perf_counter()
        res = run(_config(work, workers), out)
        dt = time.perf_counter() - t0
        return {"items": len(res.items), "cubes": res.counts["nodule_cubes"] + res.counts["background_cubes"], "seconds": dt}
    if part == "train":
        return _train(work, workers)
    if part == "score":
        return _score(work, workers)
    raise ValueError(part)


def _cubes(work: Path, n: int):
    from pipeline.core import artifacts
    from preprocessing.cube_store import SampleCubes
    from preprocessing.intensity import fit_normalisation

    samples = artifacts.read_samples(work / "extract_w1").head(n)
    return SampleCubes(work / "extract_w1", samples, fit_normalisation("window", (-1000.0, 400.0), 28))[:]


def _train(work: Path, workers: int) -> dict:
    import torch

    from models import distributed
    from models.training import fit
    from models.zoo import build

    if distributed.launched_by_torchrun():
        distributed.init("cpu")
    torch.set_num_threads(distributed.threads_per_process(2))
    cfg = _config(work, 1, train={"epochs": 2, "batch_size": 16, "patience": 100}, model={"name": "vae3d"})
    x = _cubes(work, 256)
    torch.manual_seed(0)
    model = build("vae3d", cfg.model, 1, 28)
    out = work / f"train_w{workers}"  # shared by the ranks: rank 0 writes, all check the checkpoint
    shutil.rmtree(out, ignore_errors=True) if distributed.is_main() else None
    distributed.barrier()
    summary = fit(model, x, x[:0], cfg, out, {"hu_window": [-1000, 400], "mode": "window"})
    distributed.shutdown()
    return {"items": 2 * len(x), "seconds": summary["train_seconds"], "rank": distributed.rank_world()[0]}


def _score_chunk(args: tuple) -> int:
    import torch

    from models.batch_scoring import score_array
    from models.catalog import MODELS
    from models.zoo import build
    from pipeline.core.config import validate
    from preprocessing.cubes import centre_patch

    x, threads = args
    torch.set_num_threads(threads)
    cfg = validate({"model": {"name": "vae3d"}}, base_dir=Path("."), models=MODELS)
    torch.manual_seed(0)
    model = build("vae3d", cfg.model, 1, 28).eval()
    score_array(model, centre_patch(x, 28), 100, 16, 0, torch.device("cpu"))
    return len(x)


def _score(work: Path, workers: int) -> dict:
    import numpy as np

    from pipeline.core.engine import map_items

    x = _cubes(work, 192)
    chunks = [(c, 2 // workers) for c in np.array_split(x, workers)]
    t0 = time.perf_counter()
    done = [res for _, ok, res in map_items(_score_chunk, chunks, workers, key=lambda c: str(len(c[0])))]
    return {"items": sum(done), "seconds": time.perf_counter() - t0}


def measure(part: str, workers: int, work: Path) -> dict:
    """Run :func:`one` in a fresh subprocess (train with 2 workers: under torchrun)."""
    me = [str(Path(__file__).resolve()), "--one", part, "--workers", str(workers), "--work", str(work)]
    if part == "train" and workers > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}", *me]
    else:
        cmd = [sys.executable, *me]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{part} w{workers} failed:\n{proc.stderr[-2000:]}")
    recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rec = next(r for r in recs if r.get("rank", 0) == 0)
    rec["peak_rss_mb"] = max(r["peak_rss_mb"] for r in recs)
    rec["cpu_s"] = sum(r["cpu_s"] for r in recs)  # all ranks
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="peer,ingest,extract,train,score")
    ap.add_argument("--series", type=Path, default=DEFAULT_SERIES, help="DICOM series folder (default: the LIDC series in ../shared/data)")
    ap.add_argument("--nodules", type=Path, default=DEFAULT_NODULES, help="nodule table of that series")
    ap.add_argument("--copies", type=int, default=4, help="series copies with new UIDs for the batch measurements (default 4)")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved repeats of the peer comparison (default 5)")
    ap.add_argument("--stage-repeat", type=int, default=3, help="interleaved 1-worker/2-worker pairs per stage; medians are reported (default 3)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medanomaly_bench", help="scratch folder (kept for reuse)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        import models.scoring  # noqa: F401  imports before the clock: CPU time is the stage's own
        import models.training  # noqa: F401
        import pipeline.stages.extract  # noqa: F401
        from pipeline.runner import peak_rss_mb

        c0 = cpu_seconds()
        rec = one(args.one, args.workers, args.work)
        rec["peak_rss_mb"] = round(peak_rss_mb(), 1)
        rec["cpu_s"] = round(cpu_seconds() - c0, 2)
        print(json.dumps(rec))
        return 0
    if not args.series.is_dir():
        raise SystemExit(f"--series {args.series}: not found (the real LIDC series lives in ../shared/data)")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    load0 = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPU cores; load average (1 min) {load0:.2f}")
    if "peer" in parts:
        bench_peer(args.series, args.repeat)
    stages = [p for p in ("ingest", "extract", "train", "score") if p in parts]
    if stages:
        args.work.mkdir(parents=True, exist_ok=True)
        prepare(args.series, args.nodules, args.work, args.copies)
        unit = {"ingest": "series", "extract": "series", "train": "samples", "score": "cubes"}
        print(f"\n## Stages at 1 and 2 workers ({args.copies} copies of {args.series.name} with new UIDs; work folder {args.work})")
        print(f"Each stage: {args.stage_repeat} interleaved pairs (1 worker, then 2); medians, and the speed-up's range over the pairs.")
        print("| stage | workers | items | median s | items/s | speed-up (median; min-max of pairs) | "
              "CPU s per item | peak RSS MiB (largest process) |")
        print("|---|---|---|---|---|---|---|---|")
        for part in stages:
            recs: dict[int, list[dict]] = {1: [], 2: []}
            for _ in range(args.stage_repeat):
                for w in (1, 2):
                    recs[w].append(measure(part, w, args.work))
            ratios = [a["seconds"] / b["seconds"] for a, b in zip(recs[1], recs[2])]
            for w in (1, 2):
                rs = recs[w]
                sec, items = statistics.median(r["seconds"] for r in rs), rs[0]["items"]
                extra = f" ({statistics.median(r['cubes'] / r['seconds'] for r in rs):.0f} cubes/s)" if "cubes" in rs[0] else ""
                speed = "1.00×" if w == 1 else f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}-{max(ratios):.2f})"
                cpu = statistics.median(r["cpu_s"] for r in rs) / items
                print(f"| {part} | {w} | {items} {unit[part]} | {sec:.2f} | {items / sec:.2f}{extra} | {speed} | {cpu:.3f} | "
                      f"{max(r['peak_rss_mb'] for r in rs):.0f} |", flush=True)
    print(f"\nload average (1 min) before/after: {load0:.2f} / {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
