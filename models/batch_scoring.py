"""Inference: score already-normalised patches with a detector, in batches, reproducibly.

Used by the score stage, by Ray Data actors (:mod:`models.ray_scoring`) and by the benchmarks.
Each batch gets a generator seeded with the run seed, and the models share their Monte-Carlo
noise across a batch, so a sample's scores do not depend on the batch it is scored in.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from models.detector import Detector

Batch = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]


def score_batches(model: Detector, x, mc_samples: int, batch_size: int, seed: int, device: torch.device,
                  reconstructions: bool = True) -> Iterator[Batch]:
    """Score already-normalised patches (N, C, *spatial; an array or anything sliced like one, such as
    :class:`preprocessing.cube_store.SampleCubes`) ``batch_size`` at a time; yields each batch's
    ``(scores, residual maps, reconstructions)`` (maps float16; reconstructions None when the model
    gives none, or when not asked for)."""
    for i in tqdm(range(0, len(x), batch_size), desc="score", unit="batch", leave=False, disable=None):
        gen = torch.Generator().manual_seed(seed)
        out = model.score(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device), mc_samples, gen)
        recon = out.reconstruction.detach().float().cpu().numpy().astype(np.float16) if reconstructions and out.reconstruction is not None else None
        yield {k: v.float().cpu().numpy() for k, v in out.scores.items()}, out.residual.cpu().numpy().astype(np.float16), recon


def score_array(model: Detector, x, mc_samples: int, batch_size: int, seed: int,
                device: torch.device) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
    """:func:`score_batches` gathered: ``(scores, residual maps, reconstructions)`` of all patches
    (reconstructions None unless every batch has them)."""
    scores: dict[str, list[np.ndarray]] = {}
    residuals, recons = [], []
    for batch_scores, residual, recon in score_batches(model, x, mc_samples, batch_size, seed, device):
        for k, v in batch_scores.items():
            scores.setdefault(k, []).append(v)
        residuals.append(residual)
        if recon is not None:
            recons.append(recon)
    recon = np.concatenate(recons) if len(recons) == len(residuals) and recons else None
    return {k: np.concatenate(v) for k, v in scores.items()}, np.concatenate(residuals), recon
