"""Pinned outputs that hold on every machine: reference tables as values, compared with a tolerance.

Why not hashes of the raw bytes: float reductions in torch, oneDNN and BLAS take other kernels on
other processors (AVX-512, AVX2, SSE, ARM), so the last bits of every float differ. Measured on
the short ct_nodules_vae run (2 epochs): with ``ATEN_CPU_CAPABILITY=default`` or ``avx2`` in place of
this machine's AVX-512, the training losses agree to 1e-5 and every id, label, split and flag
agrees, but Adam amplifies the last-bit differences in the weights, so the scores of the *trained*
model differ by up to 1e-4 (ELBO, IWAE) and 4-10 % (KL, latent norm: the small terms). Scores of
one *fixed* model agree to ≤ 1e-6. So a pin has three parts:

- the tables that hold no training result (``splits.csv``, ``samples.csv``): equal as values;
- the training: ``model/curves.csv`` losses within a relative 1e-4, the run's ids, labels and
  splits exact;
- the scoring: ``scores.csv`` of the pinned model folder (checked in under
  ``tests/data/pinned/<config>/model``, with its training run's ``calibration.json`` for the
  p-values) on this run's samples, exact on ids, labels, splits and
  flags, within a relative 1e-4 on every float.

A run repeated on the same machine is still byte-identical (tests/pipeline/test_privacy_determinism.py).

After a change that is meant to change outputs, regenerate and review the diff, saying why in the
commit: ``python tests/pinned.py --write``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PINNED = ROOT / "tests" / "data" / "pinned"
CONFIGS = ("ct_nodules_vae.yaml", "xray.yaml")
SHORT = ["--set", "train.epochs=2", "--set", "score.mc_samples=4", "--set", "evaluate.bootstrap=50",
         "--set", "run.threads=1", "--set", "evaluate.figures=false"]
RTOL = 1e-4
LOSSES = ("train_loss", "val_loss")  # the curves' well-conditioned columns (the KL term alone is not: see above)
# Another processor, simulated on this one: the portable baseline kernels of torch (ATen), oneDNN,
# MKL and OpenBLAS instead of the newest this CPU has.
OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                 "OPENBLAS_CORETYPE": "Nehalem" if os.uname().machine == "x86_64" else os.environ.get("OPENBLAS_CORETYPE", "")}


def pinned_dir(config: str) -> Path:
    return PINNED / Path(config).stem


def read_table(path: Path) -> pd.DataFrame:
    """A CSV with the repository root replaced by ``<ROOT>`` (absolute image paths), ids kept as text."""
    text = path.read_text().replace(str(ROOT), "<ROOT>")
    return pd.read_csv(pd.io.common.StringIO(text), dtype={"sample_id": str, "patient_id": str, "series_uid": str, "nodule_id": str,
                                                            "group": str}, keep_default_na=False, na_values=[""])


def table_differences(got: pd.DataFrame, want: pd.DataFrame, rtol: float = RTOL, columns: tuple[str, ...] | None = None) -> list[str]:
    """What differs between two tables: columns, row count, any non-float cell, or a float beyond ``rtol``
    (relative; NaN equals NaN). Empty when they match."""
    cols = list(columns or want.columns)
    if columns is None and list(got.columns) != list(want.columns):
        return [f"columns {list(got.columns)} != {list(want.columns)}"]
    if len(got) != len(want):
        return [f"{len(got)} rows != {len(want)}"]
    out = []
    for c in cols:
        a, b = got[c], want[c]
        if a.dtype.kind == "f" or b.dtype.kind == "f":
            x, y = a.to_numpy(float), b.to_numpy(float)
            scale = float(np.nanmax(np.abs(y))) if np.isfinite(y).any() else 0.0
            # relative to the value, and for values near 0 (a latent norm of 0.04 beside 30) to the column's scale
            bad = ~(np.isclose(x, y, rtol=rtol, atol=rtol * scale) | (np.isnan(x) & np.isnan(y)))
            if bad.any():
                i = int(np.argmax(bad))
                out.append(f"{c}: {int(bad.sum())} value(s) beyond rtol {rtol:g}, e.g. row {i}: {x[i]!r} != {y[i]!r}")
        elif not a.astype(str).equals(b.astype(str)):
            i = int(np.argmax((a.astype(str) != b.astype(str)).to_numpy()))
            out.append(f"{c}: row {i}: {a.iloc[i]!r} != {b.iloc[i]!r}")
    return out


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def pinned_run(config: str, out: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The short run (training included) in ``out``, then its samples scored again with the pinned model into ``out/pinned``."""
    cfg = str(ROOT / "configs" / config)
    trained = run(["run", cfg, "--out", str(out), *SHORT], env)
    if trained.returncode != 0:
        return trained, trained
    model = pinned_dir(config) / "model"
    if not model.is_dir():  # --write: this run's model becomes the pinned one
        model = out / "pinned_model"
        shutil.copytree(out / "model", model, ignore=shutil.ignore_patterns("train_state.pt", "curves.*"))
    shutil.copytree(out, out.parent / "pinned", ignore=shutil.ignore_patterns("pinned_model", "model"), dirs_exist_ok=True)
    scored = run(["score", cfg, "--out", str(out.parent / "pinned"), *SHORT, "--set", f"score.model={model}"], env)
    return trained, scored


def check(config: str, out: Path) -> list[str]:
    """Every difference between the run in ``out`` (and ``out/../pinned``) and the pins of ``config``."""
    pin, problems = pinned_dir(config), []
    for name in ("splits.csv", "samples.csv"):
        problems += [f"{name}: {d}" for d in table_differences(read_table(out / name), read_table(pin / name), rtol=1e-9)]
    problems += [f"curves.csv: {d}" for d in table_differences(read_table(out / "model" / "curves.csv"), read_table(pin / "curves.csv"),
                                                                columns=("epoch", *LOSSES))]
    trained, scored = read_table(out / "scores.csv"), read_table(out.parent / "pinned" / "scores.csv")
    want = read_table(pin / "scores.csv")
    ids = tuple(c for c in want.columns if want[c].dtype.kind != "f" and c != "flagged")
    problems += [f"scores.csv (trained here): {d}" for d in table_differences(trained, want, columns=ids)]
    problems += [f"scores.csv (pinned model): {d}" for d in table_differences(scored, want)]
    return problems


def write(config: str) -> None:
    """Record the pins of ``config`` from a fresh run on this machine (the model folder included)."""
    pin = pinned_dir(config)
    shutil.rmtree(pin, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        trained, scored = pinned_run(config, out)
        assert trained.returncode == 0 and scored.returncode == 0, trained.stderr + scored.stderr
        pin.mkdir(parents=True)
        shutil.copytree(out / "pinned_model", pin / "model")
        shutil.copy(out / "calibration.json", pin / "calibration.json")  # the model's training run's calibration: its p-values
        for name in ("splits.csv", "samples.csv"):
            (pin / name).write_text((out / name).read_text().replace(str(ROOT), "<ROOT>"))
        shutil.copy(out / "model" / "curves.csv", pin / "curves.csv")
        (pin / "scores.csv").write_text((Path(tmp) / "pinned" / "scores.csv").read_text().replace(str(ROOT), "<ROOT>"))
    print(f"wrote {pin}")


if __name__ == "__main__":
    if "--write" in sys.argv:
        for c in CONFIGS:
            write(c)
