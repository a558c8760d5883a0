"""Scoring throughput of the registered detectors (untrained weights; speed only).

Every requested model is built with its default ``Params`` for 1 input channel and 28-voxel patches
(2D models on 28², 3D models on 28³) and scores ``--n`` random inputs in [0, 1] through
:func:`models.batch_scoring.score_array`, the path the score stage uses, with ``torch.set_num_threads``
threads (default 2). ``--warmup`` batches are scored first and not timed; with ``--repeat R`` the
fastest of R timed runs is reported. A model that fails to build or score is reported as an error
row (exit status 1). Timings on a shared machine are noisy: the load average is printed.

    python benchmarks/bench_models.py                          # every registered model
    python benchmarks/bench_models.py --models vae2d,vae3d --n 64
    python benchmarks/bench_models.py --models vae3d --set vae3d.channels=[8,16,32] --set vae3d.num_res_units=0

``K`` is ``--mc-samples`` (default 100, the pipeline default): the number of Monte-Carlo samples of
the VAE's ELBO/IWAE; models without Monte-Carlo scores ignore it. ``params`` counts the numbers in
the state_dict (parameters + buffers, e.g. PCA's components).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.batch_scoring import score_array  # noqa: E402
from models.zoo import DETECTORS  # noqa: E402

COLUMNS = ("model", "dims", "params", "K", "batch", "n", "items/s", "s/item", "note")


def parse_sets(items: list[str]) -> dict[str, dict]:
    """``--set MODEL.KEY=VALUE`` (VALUE read as YAML) → {model: {key: value}}."""
    out: dict[str, dict] = {}
    for text in items:
        key, sep, raw = text.partition("=")
        model, dot, field = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {text!r}: expected MODEL.KEY=VALUE, e.g. --set vae3d.latent_dim=32")
        out.setdefault(model, {})[field] = yaml.safe_load(raw)
    return out


def bench_one(name: str, overrides: dict, args) -> dict:
    row = {"model": name, "dims": "", "params": "", "K": args.mc_samples, "batch": args.batch_size, "n": args.n,
           "items/s": "", "s/item": "", "note": ""}
    try:
        cls = DETECTORS[name]
        row["dims"] = f"{args.patch}^{cls.spatial_dims}"
        params = cls.Params(name=name)
        if overrides:
            params = dataclasses.replace(params, **overrides)
            row["note"] = " ".join(f"{k}={v}" for k, v in overrides.items())
        torch.manual_seed(args.seed)
        model = cls(params, args.in_channels, args.patch).to(args.device).eval()
        row["params"] = f"{sum(v.numel() for v in model.state_dict().values()):,}"
        rng = np.random.default_rng(args.seed)
        shape = (args.in_channels, *([args.patch] * cls.spatial_dims))
        x = rng.uniform(0.0, 1.0, (args.n, *shape)).astype(np.float32)
        device = torch.device(args.device)
        if args.warmup:
            score_array(model, x[: args.warmup * args.batch_size], args.mc_samples, args.batch_size, args.seed, device)
        times = []
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            scores, residual, _ = score_array(model, x, args.mc_samples, args.batch_size, args.seed, device)
            times.append(time.perf_counter() - t0)
        dt = min(times)  # best of --repeat: the least disturbed run on a shared machine
        if residual.shape != x.shape or any(len(v) != args.n for v in scores.values()):
            raise RuntimeError(f"unexpected output shapes: residual {residual.shape}, scores {({k: v.shape for k, v in scores.items()})}")
        row["items/s"] = f"{args.n / dt:.4g}"
        row["s/item"] = f"{dt / args.n:.3g}"
    except Exception as exc:  # report, do not crash the table
        row["note"] = f"ERROR {type(exc).__name__}: {exc}".replace("\n", " ")[:200]
        if args.verbose:
            traceback.print_exc()
    return row


def print_table(rows: list[dict]) -> None:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    line = lambda vals: "| " + " | ".join(str(v).ljust(widths[c]) for c, v in zip(COLUMNS, vals)) + " |"  # noqa: E731
    print(line(COLUMNS))
    print("|" + "|".join("-" * (widths[c] + 2) for c in COLUMNS) + "|")
    for r in rows:
        print(line([r[c] for c in COLUMNS]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help=f"comma-separated registry names (default: all registered: {','.join(sorted(DETECTORS))})")
    ap.add_argument("--n", type=int, default=64, help="items scored per model (default 64)")
    ap.add_argument("--batch-size", type=int, default=16, help="score batch size (default 16, the pipeline default)")
    ap.add_argument("--mc-samples", type=int, default=100, help="Monte-Carlo samples K (default 100; ignored by models without MC scores)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches scored first (default 1)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per model; the fastest is reported (default 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--patch", type=int, default=28, help="patch edge (default 28)")
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="MODEL.KEY=VALUE",
                    help="override a default model parameter (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failing models")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.models.split(",") if m.strip()] or sorted(DETECTORS)
    sets = parse_sets(args.sets)
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}; registered: {', '.join(sorted(DETECTORS))}")
    rows = []
    load0 = os.getloadavg()[0]
    for name in names:
        if name not in DETECTORS:
            rows.append({c: "" for c in COLUMNS} | {"model": name, "note": "ERROR not registered"})
            continue
        rows.append(bench_one(name, sets.get(name, {}), args))
    print_table(rows)
    print(f"load average (1 min) before/after: {load0:.2f} / {os.getloadavg()[0]:.2f} "
          f"(on a {os.cpu_count()}-core machine, other busy processes slow multi-threaded scoring a lot)")
    return 1 if any(str(r["note"]).startswith("ERROR") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
