"""Scoring and whole-image map speed of a trained 2D detector on real-size images (issue 21).

Loads a model folder (``RUN/model``) and times, on ``--n`` inputs of ``--size``² pixels with the
model's own channel count, the two paths the pipeline uses:

- **score**: :func:`models.batch_scoring.score_batches`, the score stage's path, with
  ``region: whole`` when ``--size`` is larger than the model's patch (the patch swept over the image,
  ``--overlap``), else the centre patch; reported as images/s.
- **map**: :func:`models.batch_scoring.sweep` with Gaussian blending, the map stage's sweep
  (``map.overlap``, ``map.mc_samples``), one image at a time as the stage runs; reported as s/image.

The inputs are the first ``--n`` images of a run's stored cubes when ``--run`` is given (the model
range of real data), else uniform noise in [0, 1] (speed does not depend on content for these
detectors, AnoGAN's latent search aside). ``--warmup`` batches are not timed; the fastest of
``--repeat`` runs is reported with the load average, as timings on a shared 2-core machine are noisy.

    python benchmarks/bench_score2d.py --model RUN/model --size 224 --n 64
    python benchmarks/bench_score2d.py --model RUN/model --run RUN --n 64 --mc 20 --map-mc 4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.batch_scoring import score_batches, sweep  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.model_folder import read_normalisation  # noqa: E402
from pipeline.core import artifacts  # noqa: E402
from preprocessing.cube_store import SampleCubes  # noqa: E402


def inputs(args, channels: int) -> np.ndarray:
    """``(n, C, size, size)`` float32: stored cubes of ``--run`` or uniform noise."""
    if args.run:
        samples = artifacts.read_samples(args.run)
        return SampleCubes(args.run, samples.iloc[: args.n], read_normalisation(args.model))[0 : args.n].astype(np.float32)
    rng = np.random.default_rng(args.seed)
    return rng.uniform(0, 1, (args.n, channels, args.size, args.size)).astype(np.float32)


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a model folder (RUN/model)")
    ap.add_argument("--run", type=Path, help="a run folder whose stored cubes are the inputs (else noise)")
    ap.add_argument("--size", type=int, default=224, help="image edge in pixels for noise inputs (default 224)")
    ap.add_argument("--n", type=int, default=64, help="images scored (default 64)")
    ap.add_argument("--batch-size", type=int, default=32, help="images (centre) or windows (whole) per batch")
    ap.add_argument("--mc", type=int, default=20, help="score.mc_samples (default 20)")
    ap.add_argument("--map-mc", type=int, default=4, help="map.mc_samples (default 4)")
    ap.add_argument("--overlap", type=float, default=0.25, help="score.overlap and map.overlap (default 0.25)")
    ap.add_argument("--map-n", type=int, default=8, help="images mapped (default 8)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, payload = load_checkpoint(args.model)
    x = inputs(args, int(payload["in_channels"]))
    size = x.shape[-1]  # --size, or the stored images' edge with --run
    region = "whole" if size > model.patch_size else "centre"
    device = torch.device("cpu")
    load0 = os.getloadavg()[0]

    def score(xs: np.ndarray) -> None:
        for _ in score_batches(model, xs, args.mc, args.batch_size, args.seed, device, reconstructions=False,
                               region=region, overlap=args.overlap):
            pass

    score(x[: args.warmup])
    dt = best_of(args.repeat, lambda: score(x))
    windows = sweep(model, torch.from_numpy(x[:1]), 1, args.seed, args.batch_size, args.overlap)[1]

    def mapped() -> None:
        for img in x[: args.map_n]:
            sweep(model, torch.from_numpy(img[None]), args.map_mc, args.seed, args.batch_size, args.overlap, mode="gaussian")

    dm = best_of(args.repeat, mapped) / min(args.map_n, len(x))
    params = sum(p.numel() for p in model.parameters())
    print(f"model {payload['model_name']} ({params / 1e6:.2f} M parameters), patch {model.patch_size}, image "
          f"{size}² x {x.shape[1]} ch, region {region} ({windows} windows/image at overlap {args.overlap}), "
          f"torch {torch.__version__}, {args.threads} threads")
    print("| path | setting | images | images/s | s/image |")
    print("|---|---|---|---|---|")
    print(f"| score | K = {args.mc}, batch {args.batch_size} | {len(x)} | {len(x) / dt:.1f} | {dt / len(x):.3f} |")
    print(f"| map | K = {args.map_mc}, Gaussian blending | {min(args.map_n, len(x))} | {1 / dm:.1f} | {dm:.3f} |")
    print(f"load average (1 min) before/after: {load0:.2f} / {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
