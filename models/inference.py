"""Inference: score already-normalised patches with a detector, in batches, reproducibly.

Used by the score stage, by Ray Data actors (:mod:`models.ray_scoring`) and by the benchmarks.
Each batch gets a generator seeded with the run seed, and the models share their Monte-Carlo
noise across a batch, so a sample's scores do not depend on the batch it is scored in.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from models.registry import Detector


def score_array(model: Detector, x: np.ndarray, mc_samples: int, batch_size: int, seed: int,
                device: torch.device) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
    """Score already-normalised patches (N, C, *spatial); returns ``(scores, residual maps,
    reconstructions)`` (maps float16; reconstructions None when the model gives none)."""
    scores: dict[str, list[np.ndarray]] = {}
    residuals, recons = [], []
    for i in tqdm(range(0, len(x), batch_size), desc="score", unit="batch", leave=False, disable=None):
        gen = torch.Generator().manual_seed(seed)
        out = model.score(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device), mc_samples, gen)
        for k, v in out.scores.items():
            scores.setdefault(k, []).append(v.float().cpu().numpy())
        residuals.append(out.residual.cpu().numpy().astype(np.float16))
        if out.reconstruction is not None:
            recons.append(out.reconstruction.detach().float().cpu().numpy().astype(np.float16))
    recon = np.concatenate(recons) if len(recons) == len(residuals) and recons else None
    return {k: np.concatenate(v) for k, v in scores.items()}, np.concatenate(residuals), recon
