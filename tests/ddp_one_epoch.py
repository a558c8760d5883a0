"""One training epoch of a small 3D VAE through ``models.training.fit``, in one process or under torchrun.

Used by ``test_ddp.py``: ``python tests/ddp_one_epoch.py OUT`` and ``torchrun --nproc-per-node 2
tests/ddp_one_epoch.py OUT`` must give the same epoch loss and weights. Both see the same global
batches (batch_size 8 = 2 ranks × 4). Randomness that a rank draws for its own samples (the
VAE's latent noise) cannot match a single process's draws sample by sample, so it is switched off
here (z = μ), and crops are deterministic (patch = cube size, no flips).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

torch.randn_like = lambda t, *a, **k: torch.zeros_like(t)  # z = μ: no per-rank noise (see docstring)

from conftest import validate  # noqa: E402

from models import distributed  # noqa: E402
from models.training import fit  # noqa: E402
from models.zoo import build  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(1)
    if distributed.launched_by_torchrun():
        distributed.init("cpu")
    cfg = validate({"run": {"device": "cpu", "seed": 3},
                    "model": {"name": "vae3d", "latent_dim": 4, "channels": [4, 8], "strides": [2, 2]},
                    "train": {"epochs": 1, "batch_size": 8, "patch_size": 28, "flips": False, "patience": 100}}, base_dir=out)
    x = np.random.default_rng(0).random((32, 1, 28, 28, 28), dtype=np.float32)
    torch.manual_seed(0)
    model = build("vae3d", cfg.model, 1, 28)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "init.pt")
    fit(model, x, x[:8], cfg, out, {"hu_window": [0, 1], "mode": "window"})
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
