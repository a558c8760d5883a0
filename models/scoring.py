"""Scoring: every sample's centre patch → ``scores.csv``, ``residuals.npz`` and ``calibration.json``.

``scores.csv``: sample_id, patient_id, series_uid, kind, label, split, then one column per score
component of the model (higher = more anomalous). ``residuals.npz``: ``residual`` (N, C, P, P, P)
float16 maps |x − reconstruction| of the centre patch, ``sample_id`` and ``offset``, the index of
the patch's first voxel inside its cube (so the map can be placed back on the CT grid); for 2D
inputs also ``reconstruction`` (float16, model range), shown next to the image in PNG overlays.
With ``score.region: whole`` the "patch" is the whole stored cube or image, the training patch slid
over it (:func:`models.batch_scoring.sweep`): each score is the maximum of its window-score map.

Scoring runs under ``torch.inference_mode`` in batches, each read from the extract shards when it
is scored (:class:`preprocessing.intensity.SampleCubes`); Monte-Carlo noise comes from a generator
seeded with the run seed, and is shared across a batch, so scores are reproducible and do not
depend on the batch size. Each batch's residual maps are written into ``residuals.npz`` as soon as
they are computed (:func:`pipeline.core.io.npz_stream`), so memory does not grow with the number of
samples (but for the scores, and the reconstructions of 2D inputs). The Ray engine gathers the
residual maps in the driver.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.batch_scoring import score_batches
from models.calibration import check_calibration, fit_calibration, flag, p_values
from models.checkpoint import ModelFileError, device_for, load_checkpoint
from models.detector import Detector
from pipeline.core import artifacts, io
from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from preprocessing.cube_store import SampleCubes
from preprocessing.cubes import centre_offset


def model_path(cfg: Config, run_dir: Path) -> Path:
    """The model folder to score with: ``score.model`` (a model folder, or its ``model.pt``) or this run's own."""
    if cfg.score.model is None:
        return artifacts.model_dir(run_dir)
    return cfg.score.model if cfg.score.model.is_dir() else cfg.score.model.parent


def _score_table(run_dir: Path, ids: np.ndarray, splits: pd.DataFrame, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """``scores.csv`` rows: the sample's IDs, kind, label, (class), split, then one column per score."""
    samples = artifacts.read_samples(run_dir).set_index("sample_id").loc[ids]
    return pd.DataFrame({
        "sample_id": ids,
        "patient_id": samples["patient_id"].to_numpy(),
        "series_uid": samples["series_uid"].to_numpy(),
        "kind": samples["kind"].to_numpy(),
        "label": samples["label"].to_numpy(),
        **({"class": samples["class"].to_numpy()} if "class" in samples.columns else {}),  # arrays/images: the original class
        "split": splits["split"].to_numpy(),
        **scores,
    })


def _chosen(cfg: Config, run_dir: Path, norm: dict, patch: int) -> tuple[np.ndarray, SampleCubes, pd.DataFrame]:
    """IDs, centre patches (read when scored) and ``splits.csv`` rows of the samples of ``score.splits``, in ``samples.csv`` order."""
    samples = artifacts.read_samples(run_dir)
    ids = samples["sample_id"].to_numpy(str)
    splits = artifacts.read_splits(run_dir).set_index("sample_id").loc[ids]
    chosen = splits["split"].isin(cfg.score.splits).to_numpy()
    return ids[chosen], SampleCubes(run_dir, samples[chosen], norm, patch), splits[chosen]


def run(cfg: Config, run_dir: Path) -> StageResult:
    """The score stage: load the model folder, score the centre patch of every chosen sample, calibrate, write."""
    torch.set_num_threads(cfg.run.threads)
    device = device_for(cfg.run.device)
    folder = model_path(cfg, run_dir)
    model, payload = load_checkpoint(folder, device)
    whole = cfg.score.region == "whole"  # the whole cube, swept by the training patch (config check: not with Ray)
    patch = None if whole else payload["patch_size"]
    ids, cubes, splits = _chosen(cfg, run_dir, payload["normalisation"], patch)
    residuals = artifacts.path("residuals", run_dir)
    stored = cubes.stored_shape()[2]
    offset = np.array(centre_offset(stored, stored if whole else patch))
    if cfg.run.engine == "ray":  # Ray Data scoring carries no reconstructions: 2D overlays then show image and residual only
        from models.ray_scoring import score_with_ray  # Ray is optional (medanomaly[ray])

        scores, residual = score_with_ray(folder, cubes, cfg.score.mc_samples, cfg.score.batch_size,
                                          cfg.run.seed, device.type, cfg.run.threads, cfg.run.workers)
        io.write_npz(residuals, residual=residual, sample_id=ids, offset=offset)
    else:
        scores = _score_streaming(model, cubes, ids, offset, cfg, device, residuals)
    table = _score_table(run_dir, ids, splits, scores)
    outputs = []
    calib = calibrate(cfg, run_dir, table)
    if calib is not None:
        table["p_value"] = p_values(table[calib["score"]].to_numpy(), calib)
        table["flagged"] = flag(table["p_value"].to_numpy(), calib)
        if cfg.score.model is None:
            outputs.append(artifacts.write_json("calibration", run_dir, calib))
    outputs[:0] = [artifacts.write_table("scores", run_dir, table), residuals]
    counts = {"scored": len(table), "mc_samples": cfg.score.mc_samples}
    if calib is not None:
        counts["flagged"] = int(table["flagged"].sum())
    return StageResult(counts=counts, outputs=outputs)


def _score_streaming(model: Detector, cubes: SampleCubes, ids: np.ndarray, offset: np.ndarray, cfg: Config, device: torch.device,
                     dest: Path) -> dict[str, np.ndarray]:
    """Score batch by batch, streaming each batch's residual maps into ``residuals.npz`` (then the
    IDs, the patch offset and, for 2D inputs, the reconstructions); returns the scores."""
    two_d, n, done = cubes.ndim == 4, len(cubes), 0
    scores: dict[str, np.ndarray] = {}  # filled in place: no small allocations that outlive a batch (they fragment the heap)
    recons = []
    with io.npz_stream(dest) as z:
        with z.rows("residual", cubes.shape, np.float16) as write:
            for batch_scores, residual, recon in score_batches(model, cubes, cfg.score.mc_samples, cfg.score.batch_size, cfg.run.seed,
                                                               device, reconstructions=two_d, region=cfg.score.region,
                                                               overlap=cfg.score.overlap):
                write(residual)
                for k, v in batch_scores.items():
                    if k not in scores:
                        scores[k] = np.empty(n, v.dtype)
                    scores[k][done : done + len(v)] = v
                done += len(residual)
                recons += [recon] if recon is not None else []
        z.put("sample_id", ids)
        z.put("offset", offset)
        if recons and sum(map(len, recons)) == n:  # 2D: shown in the PNG overlays
            z.put("reconstruction", np.concatenate(recons))
    return scores


def calibrate(cfg: Config, run_dir: Path, table: pd.DataFrame) -> dict | None:
    """Calibration of the primary score: fitted on this run's normal validation scores, or, when
    scoring new data with ``score.model``, the one stored in the run that trained that model."""
    if cfg.score.model is not None:
        return stored_calibration(model_path(cfg, run_dir).parent, table.columns)
    primary = cfg.evaluate.score if cfg.evaluate.score in table.columns else None
    normal_val = table[(table["split"] == "val") & (table["label"] == 0)]
    if primary is None or len(normal_val) < 5:
        return None
    calib = fit_calibration(normal_val[primary].to_numpy(), cfg.score.threshold, cfg.score.fpr, cfg.score.bh)
    calib["score"] = primary
    return calib


def stored_calibration(training_run: Path, columns) -> dict | None:
    """The training run's ``calibration.json`` (untrusted input: checked before use), or None."""
    calib = artifacts.read_json("calibration", training_run)
    if calib is None:
        return None
    try:
        check_calibration(calib, list(columns))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{artifacts.path('calibration', training_run)}: not a usable calibration ({exc})") from None
    return calib
