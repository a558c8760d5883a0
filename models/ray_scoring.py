"""Batch scoring on Ray Data (``run.engine: ray``): ``map_batches`` with one model per actor.

Each actor loads the checkpoint once and scores the batches it is given with
:func:`models.inference.score_array`, the function the local score stage uses, with the same
Monte-Carlo noise per batch; scores therefore do not depend on which actor scored a cube.
``run.workers`` actors run at once, each with ``run.threads`` torch threads (and one GPU each
when the run uses CUDA). Rows carry their index, so the result is put back in input order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.checkpoint import device_for, load_checkpoint
from models.inference import score_array
from pipeline.core.ray_engine import init_ray


class ModelActor:
    """Holds one detector for the lifetime of a Ray Data actor and scores numpy batches."""

    def __init__(self, checkpoint: str, mc_samples: int, seed: int, device: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.device = device_for(device)
        self.model, _ = load_checkpoint(Path(checkpoint), self.device)
        self.mc_samples, self.seed = mc_samples, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scores, residual, _ = score_array(self.model, batch["x"], self.mc_samples, len(batch["x"]), self.seed, self.device)
        return {"index": batch["index"], "residual": residual, **{f"score:{k}": v for k, v in scores.items()}}


def score_with_ray(checkpoint: Path, x: np.ndarray, mc_samples: int, batch_size: int, seed: int, device: str, threads: int,
                   actors: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Score (N, C, *spatial) patches on the Ray cluster; returns ``(scores, residuals)`` like ``score_array``."""
    ray = init_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"index": i, "x": x[i]} for i in range(len(x))])
    out = ds.map_batches(
        ModelActor,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), "mc_samples": mc_samples, "seed": seed, "device": device, "threads": threads},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads,
        num_gpus=1 if device == "cuda" else 0,
    )
    parts = list(out.iter_batches(batch_size=None, batch_format="numpy"))
    index = np.concatenate([p["index"] for p in parts])
    order = np.argsort(index, kind="stable")
    if not np.array_equal(index[order], np.arange(len(x))):
        raise RuntimeError(f"Ray Data returned {len(index)} rows for {len(x)} inputs")
    names = [k.split(":", 1)[1] for k in parts[0] if k.startswith("score:")]
    scores = {n: np.concatenate([p[f"score:{n}"] for p in parts])[order] for n in names}
    return scores, np.concatenate([p["residual"] for p in parts])[order]
