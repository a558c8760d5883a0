"""Batch scoring on Ray Data (``run.engine: ray``): ``map_batches`` with one model per actor.

Each actor loads the checkpoint once and scores the batches it is given with
:func:`models.batch_scoring.score_array`, the function the local score stage uses, with the same
Monte-Carlo noise per batch; scores therefore do not depend on which actor scored a cube.
``run.workers`` actors run at once, each with ``run.threads`` torch threads (and one GPU each
when the run uses CUDA). Rows carry only their index: each actor reads its batch's patches itself
(from the run's shards, :class:`preprocessing.intensity.SampleCubes`), so no pixels pass through
the driver or the object store, and the result is put back in input order.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models.batch_scoring import score_array
from models.checkpoint import device_for, load_checkpoint
from pipeline.core.ray_engine import init_ray
from preprocessing.cube_store import SampleCubes


class ModelActor:
    """Holds one detector for the lifetime of a Ray Data actor and scores batches of sample indices."""

    def __init__(self, checkpoint: str, patches: SampleCubes | np.ndarray, mc_samples: int, seed: int, device: str, threads: int) -> None:
        torch.set_num_threads(threads)
        self.device = device_for(device)
        self.model, _ = load_checkpoint(Path(checkpoint), self.device)
        self.patches, self.mc_samples, self.seed = patches, mc_samples, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self.patches[batch["data"]]
        scores, residual, _ = score_array(self.model, x, self.mc_samples, len(x), self.seed, self.device)
        return {"index": batch["data"], "residual": residual, **{f"score:{k}": v for k, v in scores.items()}}


def score_with_ray(checkpoint: Path, x: SampleCubes | np.ndarray, mc_samples: int, batch_size: int, seed: int, device: str, threads: int,
                   actors: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Score (N, C, *spatial) patches on the Ray cluster (the actors read them, or index a small array);
    returns ``(scores, residuals)`` like ``score_array``."""
    ray = init_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # Sample indices in the object store already (a read task would compete with the actors for CPUs), 4 blocks per actor
    blocks = max(1, min(math.ceil(len(x) / batch_size), 4 * actors))
    ds = ray.data.from_numpy(np.array_split(np.arange(len(x)), blocks))
    kwargs = {"checkpoint": str(checkpoint), "patches": x, "mc_samples": mc_samples, "seed": seed, "device": device, "threads": threads}
    out = ds.map_batches(
        ModelActor,
        fn_constructor_kwargs=kwargs,
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
