"""Score stage: every sample's centre patch → ``scores.csv`` and ``residuals.npz``.

``scores.csv``: sample_id, patient_id, series_uid, kind, label, split, then one column per score
component of the model (higher = more anomalous). ``residuals.npz``: ``residual`` (N, C, P, P, P)
float16 maps |x − reconstruction| of the centre patch, ``sample_id`` and ``offset``, the index of
the patch's first voxel inside its cube (so the map can be placed back on the CT grid); for 2D
inputs also ``reconstruction`` (float16, model range), shown next to the image in PNG overlays.

Scoring runs under ``torch.inference_mode`` in batches; Monte-Carlo noise comes from a generator
seeded with the run seed, and is shared across a batch, so scores are reproducible and do not
depend on the batch size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from evaluation.calibration import fit_calibration, flag, p_values
from models.checkpoint import MODEL_DIR, MODEL_FILE, device_for, load_checkpoint
from models.registry import Detector
from pipeline import io
from pipeline.config import Config
from pipeline.results import StageResult
from preprocessing.augment import centre_offset
from preprocessing.extract import load_cubes, load_samples
from preprocessing.splits import load_splits

SCORES_CSV = "scores.csv"
CALIBRATION_JSON = "calibration.json"
RESIDUALS_NPZ = "residuals.npz"


def centre_patch(x: np.ndarray, patch: int) -> np.ndarray:
    """Centre ``patch``-sized crop of (N, C, *spatial) arrays (same rule as MONAI's centre crop)."""
    dims = x.ndim - 2
    o = [centre_offset(n, patch) for n in x.shape[2:]]
    return x[(slice(None), slice(None), *[slice(a, a + patch) for a in o[:dims]])]


def score_array(model: Detector, x: np.ndarray, mc_samples: int, batch_size: int, seed: int, device: torch.device) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
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


def model_path(cfg: Config, run_dir: Path) -> Path:
    """The checkpoint to score with: ``score.model`` (a model folder or file) or this run's own."""
    if cfg.score.model is None:
        return run_dir / MODEL_DIR / MODEL_FILE
    return cfg.score.model / MODEL_FILE if cfg.score.model.is_dir() else cfg.score.model


def run(cfg: Config, run_dir: Path) -> StageResult:
    torch.set_num_threads(cfg.run.threads)
    device = device_for(cfg.run.device)
    model, payload = load_checkpoint(model_path(cfg, run_dir), device)
    norm = payload["normalisation"]
    ids, cubes = load_cubes(run_dir, norm)
    splits = load_splits(run_dir).set_index("sample_id").loc[ids]
    chosen = splits["split"].isin(cfg.score.splits).to_numpy()
    ids, cubes, splits = ids[chosen], cubes[chosen], splits[chosen]
    patch = payload["patch_size"]
    if cfg.run.engine == "ray":  # Ray Data scoring carries no reconstructions: 2D overlays then show image and residual only
        from models.ray_scoring import score_with_ray

        scores, residual = score_with_ray(model_path(cfg, run_dir), centre_patch(cubes, patch), cfg.score.mc_samples, cfg.score.batch_size,
                                          cfg.run.seed, device.type, cfg.run.threads, cfg.run.workers)
        recon = None
    else:
        scores, residual, recon = score_array(model, centre_patch(cubes, patch), cfg.score.mc_samples, cfg.score.batch_size, cfg.run.seed, device)
    samples = load_samples(run_dir).set_index("sample_id").loc[ids]
    table = pd.DataFrame({
        "sample_id": ids,
        "patient_id": samples["patient_id"].to_numpy(),
        "series_uid": samples["series_uid"].to_numpy(),
        "kind": samples["kind"].to_numpy(),
        "label": samples["label"].to_numpy(),
        **({"class": samples["class"].to_numpy()} if "class" in samples.columns else {}),  # arrays/images: the original class
        "split": splits["split"].to_numpy(),
        **scores,
    })
    outputs = [run_dir / SCORES_CSV, run_dir / RESIDUALS_NPZ]
    calib = calibrate(cfg, run_dir, table)
    if calib is not None:
        primary = calib["score"]
        table["p_value"] = p_values(table[primary].to_numpy(), calib)
        table["flagged"] = flag(table["p_value"].to_numpy(), calib)
        if cfg.score.model is None:
            io.write_json(run_dir / CALIBRATION_JSON, calib)
            outputs.append(run_dir / CALIBRATION_JSON)
    io.write_csv(run_dir / SCORES_CSV, table)
    extra = {"reconstruction": recon} if recon is not None and cubes.ndim == 4 else {}  # 2D: shown in the PNG overlays
    io.write_npz(run_dir / RESIDUALS_NPZ, residual=residual, sample_id=ids, offset=np.array(centre_offset(cubes.shape[2], patch)), **extra)
    counts = {"scored": len(table), "mc_samples": cfg.score.mc_samples}
    if calib is not None:
        counts["flagged"] = int(table["flagged"].sum())
    return StageResult(counts=counts, outputs=outputs)


def calibrate(cfg: Config, run_dir: Path, table: pd.DataFrame) -> dict | None:
    """Calibration of the primary score: fitted on this run's normal validation scores, or, when
    scoring new data with ``score.model``, the one stored next to that model (``calibration.json``)."""
    if cfg.score.model is not None:
        stored = model_path(cfg, run_dir).parent.parent / CALIBRATION_JSON
        return json.loads(stored.read_text()) if stored.exists() else None
    primary = cfg.evaluate.score if cfg.evaluate.score in table.columns else None
    normal_val = table[(table["split"] == "val") & (table["label"] == 0)]
    if primary is None or len(normal_val) < 5:
        return None
    calib = fit_calibration(normal_val[primary].to_numpy(), cfg.score.threshold, cfg.score.fpr, cfg.score.bh)
    calib["score"] = primary
    return calib


def load_scores(run_dir: Path) -> pd.DataFrame:
    table = pd.read_csv(run_dir / SCORES_CSV, dtype={"sample_id": str, "patient_id": str, "series_uid": str})
    return table.fillna({"series_uid": ""})
