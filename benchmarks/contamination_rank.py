"""Where do anomalies hidden in a training set rank in the synth detector's per-image training loss?

The diagnosis behind ``model.trim`` (docs/BENCHMARK_NOTES.md, "Contamination"). For a finished
contaminated run (its ``splits.csv`` has anomalies in ``train``) and one or more synth model
folders, it alters the training images in random batches exactly as training does, and prints how
often the hidden anomalies are among the top 5 / 10 / 25 % of their batch by

- ``whole``: the pretext loss over all voxels (the detector's own ``pretext_losses``) (what a plain trimmed loss would rank by), and
- ``native``: the loss on the voxels the blend left unaltered (target 0; what ``model.trim`` ranks by).

Chance is 5 / 10 / 25 %. Usage (the run folder gives the training images; any model can be ranked):

    python benchmarks/contamination_rank.py RUN_DIR MODEL_DIR [MODEL_DIR ...] --passes 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a finished run whose training split holds hidden anomalies")
    ap.add_argument("models", type=Path, nargs="+", help="synth model folders to rank with")
    ap.add_argument("--passes", type=int, default=5, help="random passes over the training set")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    import numpy as np
    import torch

    from models.checkpoint import load_checkpoint
    from pipeline.core import artifacts
    from preprocessing.intensity import normalise

    ids, raw = artifacts.read_raw_cubes(args.run_dir)
    splits = artifacts.read_splits(args.run_dir).set_index("sample_id")
    train = np.flatnonzero(splits.loc[ids, "split"].to_numpy() == "train")
    hidden = splits.loc[ids[train], "label"].to_numpy() == 1
    print(f"{args.run_dir}: {len(train)} training images, {hidden.sum()} of them anomalies")
    for folder in args.models:
        model, payload = load_checkpoint(folder)
        x = torch.as_tensor(normalise(raw[train], payload["normalisation"]), dtype=torch.float32)
        ranks: dict[str, list[np.ndarray]] = {"whole": [], "native": []}
        order = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            for p in range(args.passes):
                perm = torch.randperm(len(x), generator=order).numpy()
                for b in range(0, len(x) - args.batch + 1, args.batch):
                    idx = perm[b : b + args.batch]
                    whole, native = model.pretext_losses(x[idx], torch.Generator().manual_seed(p * 100_003 + b))
                    for key, loss in (("whole", whole), ("native", native)):
                        r = loss.argsort().argsort().numpy() / (len(idx) - 1)  # 0 = lowest loss of the batch, 1 = highest
                        ranks[key].append(r[hidden[idx]])
        for key, rs in ranks.items():
            r = np.concatenate(rs)
            print(f"  {folder}: {key:6s} loss: hidden anomalies in their batch's top 5 % {np.mean(r >= 0.95):.2f}, "
                  f"top 10 % {np.mean(r >= 0.90):.2f}, top 25 % {np.mean(r >= 0.75):.2f} ({len(r)} draws)")


if __name__ == "__main__":
    main()
