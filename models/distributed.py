"""Data-parallel training (DDP) launched by ``torchrun``: process group, ranks and launch.

``pipeline train CONFIG --ddp`` re-runs itself under ``python -m torch.distributed.run
--standalone --nproc-per-node N`` (one node); on a cluster, start ``torchrun`` yourself on every
node (see docs/SCALING.md) and the CLI sees that it already runs under torchrun. The backend is
NCCL on CUDA and gloo on CPU. ``train.batch_size`` stays the *global* batch: every rank trains
on ``batch_size / world_size`` samples per step and DDP averages the gradients, so one step
equals a single-process step on the same global batch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (it sets RANK, WORLD_SIZE and the rendezvous)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def default_nproc() -> int:
    """One process per GPU, else 2 CPU processes."""
    return torch.cuda.device_count() or 2


def launch(argv: list[str], nproc: int) -> int:
    """Run ``pipeline <argv>`` under torchrun with ``nproc`` processes on this machine; returns its exit code.

    A single-node run talks over loopback (gloo's interface is set to ``lo`` unless the caller set one).
    """
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    argv = _without_option(argv, "--nproc")  # torchrun's own parser would read it as --nproc-per-node
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "pipeline.cli", *argv]
    print(f"launching: torchrun --standalone --nproc-per-node={nproc} -m pipeline.cli {' '.join(argv)}", file=sys.stderr)
    return subprocess.run(cmd, env=env).returncode


def _without_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def init(device: str = "auto") -> None:
    """Join the process group torchrun set up: NCCL with one GPU per local rank, else gloo."""
    if dist.is_initialized():
        return
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")


def rank_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def threads_per_process(threads: int) -> int:
    """Torch threads for this process: ``threads`` shared by the processes on this node."""
    return max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over all ranks (identity in one process)."""
    if rank_world()[1] == 1:
        return values
    keys = list(values)  # the same order on every rank: the same code built the dict
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t)}


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
