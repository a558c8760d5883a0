"""Train stage: fit the configured detector on normal training cubes → ``model/``.

- Data: the ``train`` split (normals, plus any contamination) as random sub-patches with flips
  (MONAI transforms); the normal ``val`` split as centre patches for early stopping and model
  selection. Test data are never touched here.
- Determinism: every epoch re-seeds torch and the MONAI transforms from (seed, epoch), so a run
  that is killed and resumed from ``train_state.pt`` continues exactly as an uninterrupted one.
- Outputs: ``model/model.pt`` (best validation loss), ``model/curves.csv``, ``model/curves.png``.
- A non-finite loss stops training with a clear message and keeps the last good checkpoint.
- DDP (``pipeline train --ddp``, :mod:`models.distributed`): the training batches come from a
  ``DistributedSampler`` (also in one process, so every process count shuffles alike), each rank
  steps on ``batch_size / world_size`` samples through ``DistributedDataParallel``, the epoch's
  losses are averaged over ranks, every rank validates on all validation cubes (identical
  weights give identical decisions), and only rank 0 writes files.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader, Dataset
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from models import distributed
from models.checkpoint import MODEL_DIR, MODEL_FILE, MODEL_KEYS, device_for, save_checkpoint
from models.registry import Detector, build, sgd_step
from pipeline import io
from pipeline.config import Config
from pipeline.errors import StageError
from pipeline.results import StageResult
from preprocessing.augment import KEY, centre_transforms, train_transforms
from preprocessing.extract import load_raw_cubes
from preprocessing.intensity import fit_normalisation, normalise
from preprocessing.splits import load_splits

STATE_FILE = "train_state.pt"


def _loader(x: np.ndarray, transform, batch_size: int) -> DataLoader:
    return DataLoader(Dataset([{KEY: c} for c in x], transform), batch_size=batch_size, shuffle=False, num_workers=0)


def _train_loader(x: np.ndarray, transform, batch_size: int, seed: int) -> DataLoader:
    """Shuffled batches of ``batch_size`` (global) samples; this rank's share under DDP.

    Every rank draws the same permutation and takes every world-size-th index, so the ranks'
    k-th batches together are exactly the k-th batch of a single process.
    """
    rank, world = distributed.rank_world()
    ds = Dataset([{KEY: c} for c in x], transform)
    return DataLoader(ds, batch_size=batch_size // world, sampler=DistributedSampler(ds, world, rank, shuffle=True, seed=seed), num_workers=0)


def _seed_epoch(transform, seed: int, epoch: int) -> None:
    # Under DDP each rank draws its own augmentation and latent noise (rank 0 = single process).
    s = (seed * 100_003 + epoch + 7_919 * distributed.rank_world()[0]) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    transform.set_random_state(seed=s)


@torch.no_grad()
def _validate(model: Detector, loader: DataLoader, device: torch.device, seed: int) -> float:
    model.eval()
    torch.manual_seed(seed)  # the single-sample loss is stochastic; fix its noise for comparability
    losses = [model.validation_loss(b[KEY].to(device)).cpu() for b in loader]
    model.train()
    return float(torch.cat(losses).mean()) if losses else float("nan")


def fit(model: Detector, train_x: np.ndarray, val_x: np.ndarray, cfg: Config, out_dir: Path, normalisation: dict, data_key: str = "") -> dict:
    """Train ``model`` and write the best checkpoint and curves into ``out_dir``; returns a summary.

    ``data_key`` identifies the training data; a saved ``train_state.pt`` is resumed only when
    it matches together with the train/model config.
    """
    fingerprint = io.sha256_json([cfg.section("train"), cfg.section("model"), cfg.run.seed, data_key])
    tc, seed = cfg.train, cfg.run.seed
    rank, world = distributed.rank_world()
    main = rank == 0
    device = device_for(cfg.run.device)
    model.to(device).train()
    dims = model.spatial_dims
    t_train = train_transforms(tc.patch_size, dims, tc.flips)
    val_loader = _loader(val_x, centre_transforms(tc.patch_size, dims), tc.batch_size)
    state_path, ckpt_path = out_dir / STATE_FILE, out_dir / MODEL_FILE
    if not model.sgd:  # closed-form models: one fit on all centre patches
        t0 = time.perf_counter()
        if world > 1:
            raise StageError(f"train --ddp: {model.registry_name} is fitted in closed form; train it in one process")
        x = next(iter(_loader(train_x, centre_transforms(tc.patch_size, dims), len(train_x))))[KEY]
        terms = model.fit_arrays(x.to(device))
        val = float(_validate(model, val_loader, device, seed)) if len(val_x) else float("nan")
        _write_curves(out_dir, [{"epoch": 0, **{f"train_{k}": v for k, v in terms.items()}, "val_loss": val}])
        save_checkpoint(ckpt_path, model, normalisation, {"epoch": 0, "val_loss": val, "seed": seed, "config": cfg.to_dict()})
        return {"best_epoch": 0, "best_val_loss": val, "epochs_run": 1, "stop_reason": "closed-form fit", "train_seconds": time.perf_counter() - t0, "diverged": False}
    history, best, best_epoch, start, bad_epochs, stop_reason = [], math.inf, -1, 0, 0, "max epochs"
    end = tc.epochs
    optimizers = model.configure_optimizers(tc.lr)
    if state_path.exists():  # resume a killed run
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        if st.get("fingerprint") == fingerprint:
            model.load_state_dict(st["model"])
            for opt, s in zip(optimizers, st["optimizers"]):
                opt.load_state_dict(s)
            history, best, best_epoch, start, bad_epochs = st["history"], st["best"], st["best_epoch"], st["epoch"] + 1, st["bad_epochs"]
            if len(val_x) and bad_epochs >= tc.patience:  # killed after early stopping: do not train on
                end, stop_reason = start, f"early stop: validation loss did not improve for {tc.patience} epochs"
    ddp = None
    if world > 1:
        if not model.single_loss() or len(optimizers) != 1:
            raise StageError(f"train --ddp: {model.registry_name} trains with several optimisers (adversarial training); "
                             "DDP supports models with one loss and one optimiser (vae2d, vae3d)")
        if tc.batch_size % world:
            raise StageError(f"train.batch_size: {tc.batch_size} (the global batch) must be divisible by the {world} DDP processes")
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    t0 = time.perf_counter()
    epoch = start - 1
    bar = tqdm(range(start, end), desc="train", unit="epoch", leave=False, disable=None if main else True)
    for epoch in bar:
        _seed_epoch(t_train, seed, epoch)
        model.on_epoch_start(epoch, tc.epochs)
        loader = _train_loader(train_x, t_train, tc.batch_size, seed * 1000 + epoch)
        terms: dict[str, list[float]] = {}
        for batch in loader:
            x = batch[KEY].to(device)
            step = sgd_step(ddp, x, optimizers[0], tc.max_grad_norm) if ddp else model.training_step(x, optimizers, tc.max_grad_norm)
            for k, v in step.items():
                terms.setdefault(k, []).append(v)
        row = {"epoch": epoch, **distributed.mean_over_ranks({f"train_{k}": float(np.mean(v)) for k, v in terms.items()})}
        if not all(math.isfinite(v) for v in row.values()):
            stop_reason = f"non-finite training loss at epoch {epoch} ({row}); kept the checkpoint of epoch {best_epoch}"
            break
        val = _validate(model, val_loader, device, seed) if len(val_x) else float("nan")
        row["val_loss"] = val  # no wall time here: curves.csv is identical for identical runs
        bar.set_postfix(loss=f"{row['train_loss']:.1f}", val=f"{val:.1f}")
        history.append(row)
        save = False
        if not model.selection_active():  # e.g. a GAN phase before the encoder phase: keep the latest
            best, bad_epochs, save = math.inf, 0, True
        elif (math.isfinite(val) and val < best) or not len(val_x):
            best, best_epoch, bad_epochs, save = (val if len(val_x) else row["train_loss"]), epoch, 0, True
        else:
            bad_epochs += 1
        if main:
            if save:
                save_checkpoint(ckpt_path, model, normalisation, {"epoch": epoch, "val_loss": val, "seed": seed, "config": cfg.to_dict(), "world_size": world})
            _write_curves(out_dir, history, plot=False)
            io.write_with(state_path, lambda tmp: torch.save({
                "fingerprint": fingerprint, "model": model.state_dict(),
                "optimizers": [o.state_dict() for o in optimizers], "history": history, "best": best,
                "best_epoch": best_epoch, "epoch": epoch, "bad_epochs": bad_epochs}, tmp))
        if len(val_x) and bad_epochs >= tc.patience:
            stop_reason = f"early stop: validation loss did not improve for {tc.patience} epochs"
            break
    bar.close()
    if main:
        _write_curves(out_dir, history)
    distributed.barrier()  # rank 0 has written its last checkpoint
    if not ckpt_path.exists():
        raise StageError(f"train: no usable checkpoint ({stop_reason})")
    post = _fit_after_training(model, ckpt_path, train_x, tc.patch_size, device) if main else {}
    distributed.barrier()  # the post-fit checkpoint is written
    if main:
        state_path.unlink(missing_ok=True)
    return {"best_epoch": best_epoch, "best_val_loss": best, "epochs_run": epoch + 1, "stop_reason": stop_reason,
            "train_seconds": time.perf_counter() - t0, "diverged": stop_reason.startswith("non-finite"), "world_size": world, **post}


def _fit_after_training(model: Detector, ckpt_path: Path, train_x: np.ndarray, patch: int, device: torch.device) -> dict:
    """Reload the selected checkpoint, let the model fit its post-hoc statistics on the training
    centre patches (:meth:`Detector.fit_after_training`) and save the checkpoint again."""
    from models.checkpoint import load_checkpoint
    from models.score import centre_patch

    best, payload = load_checkpoint(ckpt_path, device)
    terms = best.fit_after_training(torch.from_numpy(np.ascontiguousarray(centre_patch(train_x, patch))).to(device))
    if terms:
        extra = {k: v for k, v in payload.items() if k not in MODEL_KEYS}
        save_checkpoint(ckpt_path, best, payload["normalisation"], extra | {"post_fit": terms})
    model.load_state_dict(best.state_dict())
    return terms


def _write_curves(out_dir: Path, history: list[dict], plot: bool = True) -> None:
    """``curves.csv`` (every epoch, so a killed run keeps it) and ``curves.png`` (at the end: a figure per epoch costs more than a small model's epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame(history)
    io.write_csv(out_dir / "curves.csv", df)
    if not plot or df.empty:
        return
    cols = [c for c in df.columns if c.startswith("train_") or c == "val_loss"]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 2.8), squeeze=False)
    for ax, c in zip(axes[0], cols):
        ax.plot(df["epoch"], df[c], marker=".")
        ax.set_title(c)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    io.write_with(out_dir / "curves.png", lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def run(cfg: Config, run_dir: Path) -> StageResult:
    torch.set_num_threads(distributed.threads_per_process(cfg.run.threads))
    splits = load_splits(run_dir)
    ids, raw = load_raw_cubes(run_dir)
    pos = {s: i for i, s in enumerate(ids)}
    train_idx = [pos[s] for s in splits.loc[splits["split"] == "train", "sample_id"]]
    val_idx = [pos[s] for s in splits.loc[(splits["split"] == "val") & (splits["label"] == 0), "sample_id"]]
    if not train_idx:
        raise StageError("train: the training split is empty")
    normal_idx = [pos[s] for s in splits.loc[(splits["split"] == "train") & (splits["label"] == 0), "sample_id"]]
    ec = cfg.extract
    normalisation = fit_normalisation(ec.normalise, ec.hu_window, ec.cube_size, raw[normal_idx] if ec.normalise == "zscore" else None)
    cubes = normalise(raw, normalisation)
    torch.manual_seed(cfg.run.seed)
    model = build(cfg.model.name, cfg.model, cubes.shape[1], cfg.train.patch_size)
    out_dir = run_dir / MODEL_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    data_key = io.sha256_json([io.sha256_file(run_dir / "cubes.npz"), train_idx, val_idx])
    summary = fit(model, cubes[train_idx], cubes[val_idx], cfg, out_dir, normalisation, data_key)
    result = StageResult(counts={"train_samples": len(train_idx), "val_samples": len(val_idx), "parameters": sum(p.numel() for p in model.parameters())}, extra=summary)
    if summary["diverged"]:
        result.fail("training", summary["stop_reason"])
    result.outputs = [out_dir / MODEL_FILE, out_dir / "curves.csv", out_dir / "curves.png"]
    return result
