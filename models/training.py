"""Training: fit the configured detector on normal training cubes → the model folder ``model/``.

- Data: the ``train`` split (normals, plus any contamination) as random sub-patches with flips
  (MONAI transforms); the normal ``val`` split as centre patches for early stopping and model
  selection. Test data are never touched here. Cubes are read from the extract shards when a
  batch needs them (:class:`preprocessing.intensity.SampleCubes`), in training, validation and the
  post-training fit alike, so memory does not grow with the number of samples (except for the
  closed-form baselines, which fit on all training centre patches at once).
- Determinism: every epoch re-seeds torch and the MONAI transforms from (seed, epoch), so a run
  that is killed and resumed from ``train_state.pt`` continues exactly as an uninterrupted one.
- Outputs: the model folder (:mod:`models.checkpoint`: weights of the epoch with the best
  validation loss, ``model.json``, ``manifest.json``), ``model/curves.csv``, ``model/curves.png``.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from monai.data import DataLoader, Dataset
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from models import distributed
from models.checkpoint import MODEL_KEYS, device_for, load_checkpoint, save_checkpoint
from models.detector import Detector, sgd_step
from models.zoo import build
from pipeline.core import artifacts, io
from pipeline.core.errors import StageError
from pipeline.core.results import StageResult
from pipeline.core.schema import Config
from preprocessing.augment import KEY, train_transforms

# Training and validation data: an (N, C, *spatial) array in model range, or the same read on access.
from preprocessing.cube_store import SampleCubes
from preprocessing.cubes import centre_patch
from preprocessing.intensity import fit_normalisation

Cubes = np.ndarray | SampleCubes
PATCH_BATCH = 256  # samples per read when centre patches of all training samples are needed


class _Batches:
    """Centre patches of ``x`` in fixed order, ``batch_size`` at a time, read anew on every pass (validation; no augmentation)."""

    def __init__(self, x: Cubes, patch: int, batch_size: int) -> None:
        self.x, self.patch, self.batch_size = x, patch, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.x), self.batch_size):
            yield torch.from_numpy(np.ascontiguousarray(centre_patch(self.x[i : i + self.batch_size], self.patch)))


class _Patches:
    """Centre patches of ``x`` as tensors on ``device``, read when sliced: what the train stage gives
    :meth:`Detector.fit_after_training` in place of one (N, C, *spatial) tensor (``len`` and ``[i:j]``)."""

    def __init__(self, x: Cubes, patch: int, device: torch.device) -> None:
        self.x, self.patch, self.device = x, patch, device

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: slice) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(centre_patch(self.x[index], self.patch))).to(self.device)


class _Items:
    """``{KEY: x[i]}`` on access: a training cube is read when the loader asks for it."""

    def __init__(self, x: Cubes) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {KEY: self.x[i]}


def _train_loader(x: Cubes, transform, batch_size: int, seed: int) -> DataLoader:
    """Shuffled batches of ``batch_size`` (global) samples, each cube read and transformed when drawn; this rank's share under DDP.

    Every rank draws the same permutation and takes every world-size-th index, so the ranks'
    k-th batches together are exactly the k-th batch of a single process.
    """
    rank, world = distributed.rank_world()
    ds = Dataset(_Items(x), transform)
    return DataLoader(ds, batch_size=batch_size // world, sampler=DistributedSampler(ds, world, rank, shuffle=True, seed=seed), num_workers=0)


def _seed_epoch(transform, seed: int, epoch: int) -> None:
    # Under DDP each rank draws its own augmentation and latent noise (rank 0 = single process).
    s = (seed * 100_003 + epoch + 7_919 * distributed.rank_world()[0]) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    transform.set_random_state(seed=s)


@torch.no_grad()
def _validate(model: Detector, batches: _Batches, device: torch.device, seed: int) -> float:
    """Mean per-sample validation loss on normal validation patches (NaN without any)."""
    model.eval()
    torch.manual_seed(seed)  # the single-sample loss is stochastic; fix its noise for comparability
    losses = [model.validation_loss(b.to(device)).cpu() for b in batches]
    model.train()
    return float(torch.cat(losses).mean()) if losses else float("nan")


@dataclass
class _State:
    """Where training stands (saved in ``train_state.pt`` after every epoch, so a killed run resumes)."""

    history: list[dict] = field(default_factory=list)
    best: float = math.inf
    best_epoch: int = -1
    start: int = 0
    bad_epochs: int = 0
    stop_reason: str = "max epochs"


def fit(model: Detector, train_x: Cubes, val_x: Cubes, cfg: Config, out_dir: Path, normalisation: dict, data_key: str = "") -> dict:
    """Train ``model`` and write the best checkpoint and curves into ``out_dir``; returns a summary.

    Args:
        model: a freshly built detector.
        train_x, val_x: normalised training cubes (N, C, *spatial; random patches are cut from
            them) and normal validation cubes (their centre patches select the epoch): arrays, or
            :class:`SampleCubes` read from the shards a batch at a time.
        cfg: the run config (``train``, ``model``, ``run.seed``, ``run.device``).
        out_dir: the model folder.
        normalisation: stored in the checkpoint for scoring new data.
        data_key: identifies the training data; ``train_state.pt`` is resumed only when it
            matches, together with the train/model config.

    Returns:
        best epoch and validation loss, epochs run, stop reason, seconds, and the terms of the
        post-training fit (:meth:`Detector.fit_after_training`).
    """
    device = device_for(cfg.run.device)
    model.to(device).train()
    model.train_precision = cfg.train.precision
    val = _Batches(val_x, cfg.train.patch_size, cfg.train.batch_size)
    if not model.sgd:
        return _fit_closed_form(model, train_x, val, cfg, out_dir, normalisation, device)
    fingerprint = io.sha256_json([cfg.section("train"), cfg.section("model"), cfg.run.seed, data_key])
    optimizers = model.configure_optimizers(cfg.train.lr)
    state = _resume(model, optimizers, out_dir, fingerprint, has_val=len(val_x) > 0, patience=cfg.train.patience)
    t0 = time.perf_counter()
    state, last_epoch = _epochs(model, optimizers, train_x, val, cfg, out_dir, normalisation, device, fingerprint, state)
    main = distributed.is_main()
    if main:
        _write_curves(out_dir, state.history)
    distributed.barrier()  # rank 0 has written its last checkpoint
    ckpt_path = artifacts.model_file("weights", out_dir)
    if not ckpt_path.exists():
        raise StageError(f"train: no usable checkpoint ({state.stop_reason})")
    post = _fit_after_training(model, ckpt_path, train_x, cfg.train.patch_size, device) if main else {}
    distributed.barrier()  # the post-fit checkpoint is written
    if main:
        artifacts.model_file("train_state", out_dir).unlink(missing_ok=True)
    return {"best_epoch": state.best_epoch, "best_val_loss": state.best, "epochs_run": last_epoch + 1, "stop_reason": state.stop_reason,
            "train_seconds": time.perf_counter() - t0, "diverged": state.stop_reason.startswith("non-finite"),
            "world_size": distributed.rank_world()[1], **post}


def _fit_closed_form(model: Detector, train_x: Cubes, val: _Batches, cfg: Config, out_dir: Path, normalisation: dict,
                     device: torch.device) -> dict:
    """Closed-form models (PCA, intensity statistics): one fit on all training centre patches (all in memory: PCA needs them)."""
    t0 = time.perf_counter()
    if distributed.rank_world()[1] > 1:
        raise StageError(f"train --ddp: {model.registry_name} is fitted in closed form; train it in one process")
    x = torch.cat(list(_Batches(train_x, cfg.train.patch_size, PATCH_BATCH)))
    terms = model.fit_arrays(x.to(device))
    loss = float(_validate(model, val, device, cfg.run.seed)) if val else float("nan")
    _write_curves(out_dir, [{"epoch": 0, **{f"train_{k}": v for k, v in terms.items()}, "val_loss": loss}])
    save_checkpoint(artifacts.model_file("weights", out_dir), model, normalisation,
                    {"epoch": 0, "val_loss": loss, "seed": cfg.run.seed, "config": cfg.to_dict()})
    return {"best_epoch": 0, "best_val_loss": loss, "epochs_run": 1, "stop_reason": "closed-form fit",
            "train_seconds": time.perf_counter() - t0, "diverged": False}


def _resume(model: Detector, optimizers: list, out_dir: Path, fingerprint: str, has_val: bool, patience: int) -> _State:
    """The state of a killed run with the same fingerprint (weights and optimisers restored), else a fresh one."""
    path = artifacts.model_file("train_state", out_dir)
    if not path.exists():
        return _State()
    st = torch.load(path, map_location="cpu", weights_only=True)  # our own file, still no pickled objects
    if st.get("fingerprint") != fingerprint:
        return _State()
    model.load_state_dict(st["model"])
    for opt, s in zip(optimizers, st["optimizers"]):
        opt.load_state_dict(s)
    state = _State(st["history"], st["best"], st["best_epoch"], st["epoch"] + 1, st["bad_epochs"])
    if has_val and state.bad_epochs >= patience:  # killed after early stopping: do not train on
        state.stop_reason = f"early stop: validation loss did not improve for {patience} epochs"
    return state


def _ddp_wrapper(model: Detector, optimizers: list, batch_size: int, device: torch.device):
    """``DistributedDataParallel`` around ``model`` when several processes train, else None."""
    world = distributed.rank_world()[1]
    if world == 1:
        return None
    if not model.single_loss() or len(optimizers) != 1:
        raise StageError(f"train --ddp: {model.registry_name} trains with several optimisers (adversarial training); "
                         "DDP supports the models with one loss and one optimiser (the vae, synth and geom families)")
    if batch_size % world:
        raise StageError(f"train.batch_size: {batch_size} (the global batch) must be divisible by the {world} DDP processes")
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _epochs(model: Detector, optimizers: list, train_x: Cubes, val: _Batches, cfg: Config, out_dir: Path,
            normalisation: dict, device: torch.device, fingerprint: str, state: _State) -> tuple[_State, int]:
    """Train from ``state.start`` until the last epoch, early stopping or a non-finite loss; returns the state and last epoch."""
    tc, seed = cfg.train, cfg.run.seed
    ddp = _ddp_wrapper(model, optimizers, tc.batch_size, device)
    t_train = train_transforms(tc.patch_size, model.spatial_dims, tc.flips)
    stopped = state.stop_reason != "max epochs"  # a resumed run that had already stopped early
    epoch = state.start - 1
    bar = tqdm(range(state.start, state.start if stopped else tc.epochs), desc="train", unit="epoch", leave=False,
               disable=None if distributed.is_main() else True)
    for epoch in bar:
        row = _train_epoch(model, optimizers, ddp, train_x, t_train, cfg, epoch, device)
        if not all(math.isfinite(v) for v in row.values()):
            state.stop_reason = f"non-finite training loss at epoch {epoch} ({row}); kept the checkpoint of epoch {state.best_epoch}"
            break
        row["val_loss"] = _validate(model, val, device, seed) if val else float("nan")  # no wall time: curves.csv is identical for identical runs
        bar.set_postfix(loss=f"{row['train_loss']:.1f}", val=f"{row['val_loss']:.1f}")
        state.history.append(row)
        save = _select(model, state, row, epoch, has_val=bool(val))
        if distributed.is_main():
            _save_epoch(model, optimizers, out_dir, normalisation, cfg, fingerprint, state, epoch, row["val_loss"], save)
        if val and state.bad_epochs >= tc.patience:
            state.stop_reason = f"early stop: validation loss did not improve for {tc.patience} epochs"
            break
    bar.close()
    return state, epoch


def _train_epoch(model: Detector, optimizers: list, ddp, train_x: Cubes, transform, cfg: Config, epoch: int, device: torch.device) -> dict:
    """One pass over the training patches; returns the epoch's mean loss terms (averaged over DDP ranks)."""
    tc, seed = cfg.train, cfg.run.seed
    _seed_epoch(transform, seed, epoch)
    model.on_epoch_start(epoch, tc.epochs)
    terms: dict[str, list[float]] = {}
    for batch in _train_loader(train_x, transform, tc.batch_size, seed * 1000 + epoch):
        x = batch[KEY].to(device)
        step = sgd_step(ddp, x, optimizers[0], tc.max_grad_norm, tc.precision) if ddp else model.training_step(x, optimizers, tc.max_grad_norm)
        for k, v in step.items():
            terms.setdefault(k, []).append(v)
    return {"epoch": epoch, **distributed.mean_over_ranks({f"train_{k}": float(np.mean(v)) for k, v in terms.items()})}


def _select(model: Detector, state: _State, row: dict, epoch: int, has_val: bool) -> bool:
    """Update the best epoch and the early-stopping count; True when this epoch's weights are kept."""
    val = row["val_loss"]
    if not model.selection_active():  # e.g. a GAN phase before the encoder phase: keep the latest
        state.best, state.bad_epochs = math.inf, 0
        return True
    if (math.isfinite(val) and val < state.best) or not has_val:
        state.best, state.best_epoch, state.bad_epochs = (val if has_val else row["train_loss"]), epoch, 0
        return True
    state.bad_epochs += 1
    return False


def _save_epoch(model: Detector, optimizers: list, out_dir: Path, normalisation: dict, cfg: Config, fingerprint: str, state: _State,
                epoch: int, val: float, save: bool) -> None:
    """Rank 0: the checkpoint (when selected), the curves so far, and the resume state."""
    if save:
        save_checkpoint(artifacts.model_file("weights", out_dir), model, normalisation,
                        {"epoch": epoch, "val_loss": val, "seed": cfg.run.seed, "config": cfg.to_dict(), "world_size": distributed.rank_world()[1]})
    _write_curves(out_dir, state.history, plot=False)
    io.write_with(artifacts.model_file("train_state", out_dir), lambda tmp: torch.save({
        "fingerprint": fingerprint, "model": model.state_dict(), "optimizers": [o.state_dict() for o in optimizers],
        "history": state.history, "best": state.best, "best_epoch": state.best_epoch, "epoch": epoch, "bad_epochs": state.bad_epochs}, tmp))


def _fit_after_training(model: Detector, ckpt_path: Path, train_x: Cubes, patch: int, device: torch.device) -> dict:
    """Reload the selected checkpoint, let the model fit its post-hoc statistics on the training
    centre patches (:meth:`Detector.fit_after_training`, read in slices) and save the checkpoint again."""
    best, payload = load_checkpoint(ckpt_path, device)
    terms = best.fit_after_training(_Patches(train_x, patch, device))
    if terms:
        extra = {k: v for k, v in payload.items() if k not in MODEL_KEYS}
        save_checkpoint(ckpt_path, best, payload["normalisation"], extra | {"post_fit": terms})
    model.load_state_dict(best.state_dict())
    return terms


def _write_curves(out_dir: Path, history: list[dict], plot: bool = True) -> None:
    """``curves.csv`` (every epoch, so a killed run keeps it) and ``curves.png`` (at the end: a figure per
    epoch costs more than a small model's epoch)."""
    df = pd.DataFrame(history)
    io.write_csv(artifacts.model_file("curves", out_dir), df)
    if not plot or df.empty:
        return
    cols = [c for c in df.columns if c.startswith("train_") or c == "val_loss"]
    fig = Figure(figsize=(3.2 * len(cols), 2.8))  # no pyplot: no backend or global figure state
    axes = fig.subplots(1, len(cols), squeeze=False)
    for ax, c in zip(axes[0], cols):
        ax.plot(df["epoch"], df[c], marker=".")
        ax.set_title(c)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    io.write_with(artifacts.model_file("curves_plot", out_dir), lambda tmp: fig.savefig(tmp, dpi=90, format="png"))


def _training_samples(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Rows of ``samples.csv`` (with each cube's shard and row) of the training samples, the normal
    validation samples and the normal training samples, in ``splits.csv`` order."""
    splits = artifacts.read_splits(run_dir, ["sample_id", "split", "label"])
    samples = artifacts.read_samples(run_dir, ["sample_id", *artifacts.SHARD_COLUMNS]).set_index("sample_id")
    pick = lambda mask: samples.loc[splits.loc[mask, "sample_id"]].reset_index()  # noqa: E731
    train, normal = splits["split"] == "train", splits["label"] == 0
    return pick(train), pick((splits["split"] == "val") & normal), pick(train & normal)


def _data_key(run_dir: Path, train: pd.DataFrame, val: pd.DataFrame) -> str:
    """Identifies the training data (the content of the shards read, the samples and their order), for resuming."""
    artifacts.check_shard_columns(train, run_dir)
    shards = sorted(set(train["shard"]) | set(val["shard"]))
    digests = {s: io.sha256_file(artifacts.path("cubes", run_dir, shard=s)) for s in shards}
    return io.sha256_json([digests, train["sample_id"].tolist(), val["sample_id"].tolist()])


def run(cfg: Config, run_dir: Path) -> StageResult:
    """The train stage: normalisation fitted on the training normals (streaming), then :func:`fit` into the model folder."""
    torch.set_num_threads(distributed.threads_per_process(cfg.run.threads))
    train, val, normals = _training_samples(run_dir)
    if not len(train):
        raise StageError("train: the training split is empty")
    ec = cfg.extract
    normalisation = fit_normalisation(ec.normalise, ec.hu_window, ec.cube_size, SampleCubes(run_dir, normals) if ec.normalise == "zscore" else None)
    train_x, val_x = SampleCubes(run_dir, train, normalisation), SampleCubes(run_dir, val, normalisation)
    torch.manual_seed(cfg.run.seed)
    model = build(cfg.model.name, cfg.model, train_x.shape[1], cfg.train.patch_size)
    out_dir = artifacts.model_dir(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = fit(model, train_x, val_x, cfg, out_dir, normalisation, _data_key(run_dir, train, val))
    result = StageResult(counts={"train_samples": len(train), "val_samples": len(val),
                                 "parameters": sum(p.numel() for p in model.parameters())}, extra=summary)
    if summary["diverged"]:
        result.fail("training", summary["stop_reason"])
    result.outputs = [artifacts.model_file(n, out_dir) for n in ("weights", "meta", "model_manifest", "curves", "curves_plot")]
    return result
