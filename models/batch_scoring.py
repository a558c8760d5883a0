"""Inference: score already-normalised patches with a detector, in batches, reproducibly.

Used by the score stage, by Ray Data actors (:mod:`models.ray_scoring`) and by the benchmarks.
Each batch gets a generator seeded with the run seed, and the models share their Monte-Carlo
noise across a batch, so a sample's scores do not depend on the batch it is scored in.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from tqdm import tqdm

from models.detector import Detector

Batch = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]


def sweep(model: Detector, x: torch.Tensor, mc_samples: int, seed: int, window_batch: int, overlap: float,
          mode: str = "constant") -> tuple[dict[str, torch.Tensor], int]:
    """Slide the model's patch over inputs larger than it, ``(B, C, *spatial)``, with MONAI's
    :func:`~monai.inferers.sliding_window_inference` (``overlap``, blending ``mode``), scoring
    ``window_batch`` windows at a time. Returns blended maps of the input's size: ``residual``
    (B, C, *S), ``reconstruction`` when the model gives one, and for every score a window-score map
    (B, 1, *S): each voxel the (weighted) mean score of the windows covering it; and the number of
    windows scored. Not under inference mode: the model's ``score`` chooses (AnoGAN's needs gradients)."""
    count = [0]

    def predictor(windows: torch.Tensor) -> dict[str, torch.Tensor]:
        count[0] += len(windows)
        out = model.score(windows, mc_samples, torch.Generator().manual_seed(seed))
        maps = {"residual": out.residual.detach().float()}
        if out.reconstruction is not None:
            maps["reconstruction"] = out.reconstruction.detach().float()
        flat = [1] * (windows.ndim - 2)
        for name, v in out.scores.items():
            maps[name] = v.detach().float().view(-1, 1, *flat).expand(-1, 1, *windows.shape[2:])
        return {k: v.clone() for k, v in maps.items()}  # normal tensors: MONAI blends them in place

    patch = [model.patch_size] * (x.ndim - 2)
    return sliding_window_inference(x, patch, window_batch, predictor, overlap=overlap, mode=mode), count[0]


def _score_whole(model: Detector, x: torch.Tensor, mc_samples: int, seed: int, batch_size: int, overlap: float):
    """``(scores, residual, reconstruction)`` of whole inputs swept by the patch: each score the maximum of its
    window-score map (:func:`sweep`, constant weights), so an image is as anomalous as its worst region."""
    maps = sweep(model, x, mc_samples, seed, batch_size, overlap)[0]
    residual, recon = maps.pop("residual"), maps.pop("reconstruction", None)
    return {k: v.flatten(1).amax(1) for k, v in maps.items()}, residual, recon


def score_batches(model: Detector, x, mc_samples: int, batch_size: int, seed: int, device: torch.device,
                  reconstructions: bool = True, region: str = "centre", overlap: float = 0.25) -> Iterator[Batch]:
    """Score already-normalised patches (N, C, *spatial; an array or anything sliced like one, such as
    :class:`preprocessing.cube_store.SampleCubes`) ``batch_size`` at a time; yields each batch's
    ``(scores, residual maps, reconstructions)`` (maps float16; reconstructions None when the model
    gives none, or when not asked for). ``region: whole``: the inputs may be larger than the model's
    patch, which is swept over them (:func:`_score_whole`, ``batch_size`` windows at a time)."""
    for i in tqdm(range(0, len(x), batch_size), desc="score", unit="batch", leave=False, disable=None):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device)
        if region == "whole":
            scores, residual, recon = _score_whole(model, xb, mc_samples, seed, batch_size, overlap)
        else:
            out = model.score(xb, mc_samples, torch.Generator().manual_seed(seed))
            scores, residual, recon = out.scores, out.residual, out.reconstruction
        recon = recon.detach().float().cpu().numpy().astype(np.float16) if reconstructions and recon is not None else None
        yield {k: v.float().cpu().numpy() for k, v in scores.items()}, residual.cpu().numpy().astype(np.float16), recon


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
