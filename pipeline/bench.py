"""``pipeline bench``: run benchmark protocols through the normal stage runner and publish tables.

A protocol is an ordinary pipeline config (``configs/bench/*.yaml``) with a ``bench`` section that
lists detectors (config overrides), how the run is repeated (seeds, or the folds of a grouped
k-fold split), an optional sweep (e.g. ``split.contamination``), the figures the seed studies
reported, and the overrides of ``--quick``. Every (detector, sweep value, repeat) is one
``run_stages`` call in its own run directory, so a benchmark run is exactly a ``pipeline run``,
and a killed benchmark resumes: finished runs are skipped by the runner.

Data stages are shared: for each repeat (and sweep value) the ``ingest``/``extract``/``split``
stages run once into ``_data/``, and their outputs are hard-linked into every detector's run
together with their manifest records; the runner still checks fingerprints and output hashes and
redoes a stage whose config differs (a detector that changes the data sections).

Each detector runs in a fresh child process, so its peak resident memory is its own. Results go
to ``<out>/bench/<protocol>.json`` (one file per protocol, with the command line and git commit),
then ``<out>/BENCHMARKS.md`` is rebuilt from every protocol file found there, with ROC curves and
score densities as ``<out>/bench/<protocol>_roc.png`` and ``_density.png``.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline import io
from pipeline.config import BenchConfig, BenchDetector, Config, resolve_config_path, set_dotted, validate
from pipeline.errors import ConfigError
from pipeline.manifest import Manifest, now

DATA_STAGES = ("ingest", "extract", "split")
CI_MAX_TEST = 300  # a repeat with fewer test samples than this also gets a pooled bootstrap CI


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass
class RunSpec:
    """One pipeline run of a protocol."""

    detector: str  # BenchDetector label
    sweep: float | None
    repeat: int
    raw: dict  # the validated-to-be raw config
    base_dir: Path  # relative paths of ``raw`` resolve here (the protocol config's folder)
    source: Path  # the protocol config
    run_dir: Path
    data_dir: Path  # where this repeat's shared data stages live (the first detector's run)


def load_protocol(path: Path, data_root: Path | None, quick: bool) -> tuple[dict, Config]:
    """The protocol's raw mapping (data paths rebased on ``data_root``, quick overrides applied) and its validated config."""
    path, _ = resolve_config_path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    cfg = validate(copy.deepcopy(raw), base_dir=path.parent, source=path)
    if not cfg.bench.detectors:
        raise ConfigError(f"{path}: bench.detectors is empty; this is not a benchmark protocol")
    for key, rel in cfg.bench.data.items():
        if data_root is not None:
            set_dotted(raw, key.split("."), str((data_root / rel).resolve()))
    raw["_base_dir"] = str(path.parent)
    return raw, cfg


def variant(raw: dict, det: BenchDetector, bench: BenchConfig, quick: bool, repeat: int, sweep: float | None) -> dict:
    """Raw config of one run: protocol ← detector overrides ← quick overrides (protocol's, then the
    detector's) ← repeat ← sweep value."""
    out = {k: copy.deepcopy(v) for k, v in raw.items() if k not in ("bench", "_base_dir")}
    if "model.name" in det.set and det.set["model.name"] != out.get("model", {}).get("name"):
        out["model"] = {}  # another model: the protocol's model parameters belong to its own model
        if "evaluate.score" not in det.set:  # and the protocol's primary score to it: unset → the model's first score
            out.get("evaluate", {}).pop("score", None)
    layers = [det.set] + ([bench.quick, det.quick_set] if quick else [])
    for layer in layers:
        for key, value in layer.items():
            set_dotted(out, key.split("."), copy.deepcopy(value))
    if bench.repeat == "folds":
        set_dotted(out, ["split", "method"], "kfold")
        set_dotted(out, ["split", "fold"], repeat)
    else:
        set_dotted(out, ["run", "seed"], repeat)
    if sweep is not None and bench.sweep_key:
        set_dotted(out, bench.sweep_key.split("."), sweep)
    out.setdefault("evaluate", {}).update(overlays=False, figures=False)  # the benchmark draws its own figures
    out["run"].pop("out", None) if isinstance(out.get("run"), dict) else None
    return out


def plan(path: Path, data_root: Path | None, runs_root: Path, quick: bool, only: list[str] | None = None, repeats: int | None = None) -> tuple[Config, list[RunSpec]]:
    """Every run of a protocol, each config validated up front (a typo fails before hours of training)."""
    raw, cfg = load_protocol(path, data_root, quick)
    bench = cfg.bench
    base_dir = Path(raw["_base_dir"])
    n_rep = bench.quick_repeats if quick else bench.repeats
    n_rep = min(n_rep, repeats) if repeats else n_rep
    sweeps: list[float | None] = list(bench.sweep_values) if bench.sweep_key else [None]
    dets = [d for d in bench.detectors if (d.quick or not quick) and (not only or d.label in only)]
    specs = []
    proto_dir = runs_root / slug(bench.protocol or path.stem)
    for sweep in sweeps:
        for rep in range(n_rep):
            data_dir = None
            for det in dets:
                r = variant(raw, det, bench, quick, rep, sweep)
                try:
                    validate(copy.deepcopy(r), base_dir=base_dir, source=path)
                except ConfigError as exc:
                    raise ConfigError(f"{path}: detector {det.label!r}: {exc}") from None
                tail = Path(f"{bench.sweep_key.split('.')[-1]}_{sweep:g}" if sweep is not None else "") / f"{bench.repeat[:-1]}{rep}"
                sub = proto_dir / slug(det.label) / tail
                data_dir = data_dir or proto_dir / "_data" / tail
                specs.append(RunSpec(det.label, sweep, rep, r, base_dir, path, sub, data_dir))
    return cfg, specs


def share_data_stages(spec: RunSpec) -> None:
    """Hard-link the data-stage outputs of ``spec.data_dir`` into ``spec.run_dir`` with their manifest records."""
    if spec.data_dir == spec.run_dir or not (spec.data_dir / "manifest.json").exists() or (spec.run_dir / "manifest.json").exists():
        return
    src = Manifest(spec.data_dir)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    dst = Manifest(spec.run_dir)
    for stage in DATA_STAGES:
        rec = src.stages.get(stage)
        if not rec or rec.get("status") != "done":
            break
        for rel in rec.get("outputs", {}):
            target = spec.run_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(spec.data_dir / rel, target)
        dst.stages[stage] = copy.deepcopy(rec)
    dst.save()


def prepare_data(specs: list[RunSpec]) -> None:
    """Run the data stages once per (sweep value, repeat) into its ``_data`` folder, with the first
    detector's config (the stages' fingerprints cover only the data sections, so they are shared)."""
    from pipeline.runner import run_stages

    done = set()
    for spec in specs:
        if spec.data_dir in done:
            continue
        done.add(spec.data_dir)
        cfg = validate(copy.deepcopy(spec.raw), base_dir=spec.base_dir, source=spec.source)
        run_stages(cfg, spec.data_dir, list(DATA_STAGES), log=lambda m: None)


def _run_detector(specs: list[RunSpec], threads: int | None) -> list[dict]:
    """Child process: every run of one detector; returns its per-run records (peak RSS from the run manifests)."""
    import models  # noqa: F401 - registers the built-in models
    from pipeline.runner import STAGE_NAMES, run_stages

    records = []
    for spec in specs:
        raw = copy.deepcopy(spec.raw)
        if threads:
            set_dotted(raw, ["run", "threads"], threads)
        cfg = validate(raw, base_dir=spec.base_dir, source=spec.source)
        share_data_stages(spec)
        t0 = time.perf_counter()
        try:
            manifest = run_stages(cfg, spec.run_dir, list(STAGE_NAMES), log=lambda m: None)
        except Exception as exc:  # noqa: BLE001 - one failing run must not lose the protocol's other runs
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"  {spec.detector} | repeat {spec.repeat}: FAILED: {msg}", file=sys.stderr, flush=True)
            records.append({"detector": spec.detector, "sweep": spec.sweep, "repeat": spec.repeat, "run_dir": str(spec.run_dir), "error": msg})
            continue
        st = manifest.stages
        print(f"  {spec.detector} | {('sweep ' + format(spec.sweep, 'g') + ' | ') if spec.sweep is not None else ''}repeat {spec.repeat}: "
              f"{time.perf_counter() - t0:.0f} s, AUROC {st['evaluate'].get('details', {}).get('auroc', float('nan')):.3f}", file=sys.stderr, flush=True)
        records.append({"detector": spec.detector, "sweep": spec.sweep, "repeat": spec.repeat, "run_dir": str(spec.run_dir),
                        "train_s": st["train"].get("wall_time_s"), "score_s": st["score"].get("wall_time_s"),
                        "train_details": st["train"].get("details", {}), "train_counts": st["train"].get("counts", {}),
                        # from the manifest, so a resumed run keeps the peak of the process that trained it
                        "peak_rss_mb": max(float(st[n].get("peak_rss_mb") or 0.0) for n in ("train", "score", "evaluate"))})
    return records


def run_protocol(path: Path, data_root: Path | None, runs_root: Path, quick: bool, jobs: int = 1, only: list[str] | None = None, repeats: int | None = None) -> dict:
    """Run (or resume) every run of one protocol; returns the protocol's result document.

    ``jobs``: detectors run at once, each in a fresh process (1 thread each when > 1); 0 runs
    everything in this process (tests), so the peak memory column is this process's.
    """
    cfg, specs = plan(path, data_root, runs_root, quick, only, repeats)
    bench = cfg.bench
    t0 = time.perf_counter()
    by_det: dict[str, list[RunSpec]] = {}
    for s in specs:
        by_det.setdefault(s.detector, []).append(s)
    print(f"[bench] {bench.protocol}: {len(specs)} run(s), {len(by_det)} detector(s){' (quick)' if quick else ''}", file=sys.stderr, flush=True)
    prepare_data(specs)
    if jobs == 0:  # in this process (tests): no per-detector memory figure
        results = {d: _run_detector(by_det[d], None) for d in by_det}
        return summarise(cfg, path, specs, results, quick, jobs, time.perf_counter() - t0)
    threads = 1 if jobs > 1 else None
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(by_det))), mp_context=get_context("spawn")) as pool:
        futures = {d: pool.submit(_run_detector, by_det[d], threads) for d in by_det}
        results = {d: fut.result() for d, fut in futures.items()}
    return summarise(cfg, path, specs, results, quick, jobs, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------


def _test_table(run_dir: Path, split: str) -> pd.DataFrame:
    from models.score import load_scores
    from preprocessing.extract import load_samples

    scores = load_scores(run_dir)
    samples = load_samples(run_dir).set_index("sample_id")
    test = scores[scores["split"] == split].copy()
    if "class" in samples.columns:
        test["class"] = samples.loc[test["sample_id"], "class"].to_numpy()
    return test


def _metrics(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, n_boot: int, seed: int = 0) -> dict:
    from evaluation.metrics import detection_metrics

    return detection_metrics(labels, scores, n_boot, 0.95, seed, groups)


def summarise(cfg: Config, path: Path, specs: list[RunSpec], results: dict[str, list[dict]], quick: bool, jobs: int, wall_s: float) -> dict:
    """Rows of the protocol table: one per (detector, score[, sweep value][, view])."""
    bench = cfg.bench
    rows, curves, failures = [], [], []
    records = {(r["detector"], r["sweep"], r["repeat"]): r for recs in results.values() for r in recs}
    dets = {d.label: d for d in bench.detectors}
    refs = {(r.detector, r.score): r for r in bench.references}
    views = [None] + list(bench.views)
    for (label, sweep), group in pd.DataFrame([{"d": s.detector, "s": s.sweep, "spec": s} for s in specs]).groupby(["d", "s"], dropna=False, sort=False):
        sweep = None if pd.isna(sweep) else float(sweep)
        reps = [records[(label, sweep, s.repeat)] for s in group["spec"]]
        failures += [{"detector": label, "sweep": sweep, "repeat": r["repeat"], "error": r["error"], "run_dir": r["run_dir"]} for r in reps if "error" in r]
        reps = [r for r in reps if "error" not in r]
        if not reps:
            continue
        tables = [_test_table(Path(r["run_dir"]), "test").assign(repeat=r["repeat"]) for r in reps]
        metrics_files = [json.loads((Path(r["run_dir"]) / "metrics.json").read_text()) for r in reps]
        primary = metrics_files[0]["primary_score"]
        score_cols = dets[label].scores or [c for c in metrics_files[0]["scores"]]
        for view in views:
            for col in score_cols:
                per_rep, pooled_parts = [], []
                for t in tables:
                    t = _view(t, view)
                    if t["label"].nunique() < 2:
                        continue
                    m = _metrics(t["label"].to_numpy(), t[col].to_numpy(), t["patient_id"].to_numpy(str), 0)
                    per_rep.append(m)
                    pooled_parts.append(t)
                if not per_rep:
                    continue
                auc = np.array([m["auroc"] for m in per_rep])
                row = {"detector": label, "score": col, "primary": col == primary, "sweep": sweep, "view": view.label if view else "",
                       "n_repeats": len(per_rep), "auroc_mean": float(auc.mean()), "auroc_std": float(auc.std(ddof=1)) if len(auc) > 1 else None,
                       "auroc_each": [round(float(a), 4) for a in auc],
                       "lr_cv_auroc_mean": float(np.mean([m["lr_protocol"].get("cv_auroc", np.nan) for m in per_rep])),
                       "lr_fitted_auroc_mean": float(np.mean([m["lr_protocol"]["fitted_auroc"] for m in per_rep])),
                       "auprc_mean": float(np.mean([m["auprc"] for m in per_rep])),
                       "sens95_mean": float(np.mean([m["sens_at_95_spec"] for m in per_rep])),
                       "n_test_normal": int(np.mean([m["n_normal"] for m in per_rep])), "n_test_anomalous": int(np.mean([m["n_anomalous"] for m in per_rep])),
                       "train_s_mean": float(np.mean([r["train_s"] for r in reps])), "score_s_mean": float(np.mean([r["score_s"] for r in reps])),
                       "epochs_run": [r["train_details"].get("epochs_run") for r in reps], "best_epoch": [r["train_details"].get("best_epoch") for r in reps],
                       "train_samples": reps[0]["train_counts"].get("train_samples"), "parameters": reps[0]["train_counts"].get("parameters"),
                       "peak_rss_mb": max(r["peak_rss_mb"] for r in reps)}
                pooled = pd.concat(pooled_parts)
                if bench.repeat == "folds" or len(tables[0]) < CI_MAX_TEST:
                    src = pooled if bench.repeat == "folds" else _view(tables[0], view)
                    m = _metrics(src["label"].to_numpy(), src[col].to_numpy(), src["patient_id"].to_numpy(str), 1000)
                    row.update(ci_what="pooled out-of-fold" if bench.repeat == "folds" else "repeat 0", ci_auroc=m["auroc"], ci=m["auroc_ci"], ci_unit=m["bootstrap_unit"])
                ref = refs.get((label, col))
                if ref is not None and view is None and sweep is None:  # in a sweep the figure is a change: the drop table shows it
                    row.update(reference=ref.auroc, reference_source=ref.source)
                rows.append(row)
                if col == primary and view is None:
                    curve_src = pooled if bench.repeat == "folds" else _view(tables[0], None)
                    curves.append({"detector": label, "score": col, "sweep": sweep, "labels": curve_src["label"].to_numpy().tolist(),
                                   "scores": curve_src[col].to_numpy(float).tolist()})
    return {"protocol": bench.protocol, "order": bench.order, "slug": slug(bench.protocol or path.stem), "config": str(path), "description": bench.description,
            "selection": bench.selection, "repeat": bench.repeat, "sweep_key": bench.sweep_key, "quick": quick, "jobs": jobs,
            "wall_s": wall_s, "run_time_s": float(sum(r["train_s"] + r["score_s"] for r in records.values() if "error" not in r)),
            "finished": now(), "command": _command(), "commit": _commit(), "machine": _machine(),
            "references": [{"detector": r.detector, "score": r.score, "auroc": r.auroc, "source": r.source} for r in bench.references],
            "rows": rows, "curves": curves, "failures": failures}


def _view(t: pd.DataFrame, view) -> pd.DataFrame:
    if view is None:
        return t
    keep = t["class"].isin(list(view.normal_classes) + list(view.anomaly_classes))
    t = t[keep].copy()
    t["label"] = t["class"].isin(view.anomaly_classes).astype(int)
    return t


def _command() -> str:
    return "pipeline " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and "bench" in sys.argv else " ".join(sys.argv)


@functools.lru_cache(maxsize=1)
def _commit() -> str:
    """The git commit the benchmark started from (read once, at the start)."""
    try:
        repo = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {'CUDA' if torch.cuda.is_available() else 'no GPU'}, Python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------
# Publishing: plots and BENCHMARKS.md
# ---------------------------------------------------------------------------------------------


def plot_protocol(doc: dict, out_dir: Path) -> list[str]:
    """ROC curves and score densities of each detector's primary score; returns the PNG names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    curves = doc["curves"]
    if not curves:
        return []
    name = doc["slug"]
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    for c in curves:
        y, s = np.asarray(c["labels"]), np.asarray(c["scores"])
        ok = np.isfinite(s)
        fpr, tpr, _ = roc_curve(y[ok], s[ok])
        tag = c["detector"] + (f" @ {c['sweep']:g}" if c["sweep"] is not None else "")
        ax.plot(fpr, tpr, lw=1.2, label=f"{tag} · {c['score']}: {roc_auc_score(y[ok], s[ok]):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    what = "pooled out-of-fold test scores" if doc["repeat"] == "folds" else "repeat 0 test set"
    ax.set(xlabel="1 − specificity (FPR)", ylabel="sensitivity (TPR)", title=f"{doc['protocol']}: ROC ({what})", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=6.5, loc="lower right", title="detector · score: AUROC", title_fontsize=7)
    fig.tight_layout()
    io.write_with(out_dir / f"{name}_roc.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    n = len(curves)
    cols = min(3, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.4 * cols, 2.5 * ((n + cols - 1) // cols)), squeeze=False)
    for ax, c in zip(axes.ravel(), curves):
        y, s = np.asarray(c["labels"]), np.asarray(c["scores"], float)
        ok = np.isfinite(s)
        lo, hi = np.quantile(s[ok], [0.005, 0.995])
        bins = np.linspace(lo, hi, 40)
        for lab, colour, text in ((0, "tab:blue", "normal"), (1, "tab:red", "anomaly")):
            ax.hist(np.clip(s[ok & (y == lab)], lo, hi), bins=bins, density=True, alpha=0.5, color=colour, label=text)
        ax.set_title((c["detector"] + (f" @ {c['sweep']:g}" if c["sweep"] is not None else "") + f" · {c['score']}")[:48], fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(f"{doc['protocol']}: score densities ({what})", fontsize=9)
    fig.tight_layout()
    io.write_with(out_dir / f"{name}_density.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return [f"{name}_roc.png", f"{name}_density.png"]


def _fmt(v, nd: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def protocol_markdown(doc: dict, figures: list[str], fig_prefix: str) -> str:
    rows = pd.DataFrame(doc["rows"])
    lines = [f"## {doc['protocol']}", "", doc["description"].strip(), ""]
    if rows.empty:
        return "\n".join(lines + [f"**Failed run**: {f['detector']}, repeat {f['repeat']}: {f['error']}" for f in doc.get("failures", [])] + [""])
    if doc["selection"]:
        lines += [f"**Selection rule (no test data).** {doc['selection'].strip()}", ""]
    per = "fold" if doc["repeat"] == "folds" else "seed"
    lines += [f"AUROC is the mean ± std over {int(rows['n_repeats'].max())} {per}s (each {per}'s test set scored by its own model)."
              + (" The CI column is the percentile bootstrap 95% CI (1000 resamples) of the " + ("pooled out-of-fold scores." if doc["repeat"] == "folds" else "repeat-0 test set.") if "ci" in rows else ""),
              "LR-CV is the seeds' logistic-regression protocol (5-fold cross-validated probabilities from the 1-D score). "
              "Times are per run (mean over repeats): train = the train stage, score = the score stage; peak RSS is that of the detector's process while it trained, scored and evaluated (from the run manifests).", ""]
    sweep = doc.get("sweep_key")
    for view, vrows in rows.groupby("view", sort=False):
        if view:
            lines += [f"### View: {view}", ""]
        head = ["detector", "score"] + ([sweep.split(".")[-1]] if sweep else []) + ["AUROC (mean ± std)"] + (["AUROC [95% CI]"] if "ci" in vrows else []) + \
               ["LR-CV AUROC", "AUPRC", "sens@95%spec", "train s", "score s", "peak MB", "seed study"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in vrows.iterrows():
            auc = _fmt(r["auroc_mean"]) + (f" ± {r['auroc_std']:.3f}" if r.get("auroc_std") is not None and np.isfinite(r.get("auroc_std")) else "")
            if r["primary"]:
                auc = f"**{auc}**"
            cells = [r["detector"], r["score"]] + ([f"{r['sweep']:g}"] if sweep else []) + [auc]
            if "ci" in vrows:
                ci = r.get("ci")
                cells.append(f"{_fmt(r.get('ci_auroc'))} [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) else "–")
            ref = r.get("reference")
            cells += [_fmt(r["lr_cv_auroc_mean"]), _fmt(r["auprc_mean"]), _fmt(r["sens95_mean"]), f"{r['train_s_mean']:.0f}", f"{r['score_s_mean']:.1f}",
                      f"{r['peak_rss_mb']:.0f}", (f"{ref:.2f} ({r['reference_source']})" if isinstance(ref, float) and np.isfinite(ref) else "")]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    if sweep:
        lines += _sweep_drop_table(rows[rows["view"] == ""], sweep, {(r["detector"], r["score"]): r for r in doc.get("references", [])})
    n_tr = rows.groupby("detector")["train_samples"].first()
    lines += [f"Test set per {per}: {int(rows['n_test_normal'].iloc[0])} normal, {int(rows['n_test_anomalous'].iloc[0])} anomalous. "
              f"Training samples per run: " + ", ".join(f"{d} {int(n)}" for d, n in n_tr.items() if pd.notna(n)) + ".", ""]
    for fail in doc.get("failures", []):
        lines.append(f"**Failed run** (left out of the table): {fail['detector']}, repeat {fail['repeat']}: {fail['error']}")
    for f in figures:
        lines.append(f"![{f}]({fig_prefix}{f})")
    lines += ["", f"Run: `{doc['command']}` at commit `{doc['commit']}`, finished {doc['finished']}, {doc['wall_s'] / 60:.1f} min wall "
              f"for this invocation ({doc['machine']}; {doc['jobs']} job(s) at a time){'; QUICK mode (reduced size)' if doc['quick'] else ''}. "
              f"Training and scoring of all its runs, resumed ones included, sum to {doc.get('run_time_s', float('nan')) / 60:.1f} min.", ""]
    return "\n".join(lines)


def _sweep_drop_table(rows: pd.DataFrame, sweep: str, refs: dict) -> list[str]:
    prim = rows[rows["primary"]]
    lines = [f"AUROC of each detector's primary score at {sweep.split('.')[-1]} = 0, then its change at each level (mean over repeats):", "",
             "| detector | score | " + " | ".join(f"{v:g}" for v in sorted(prim["sweep"].unique())) + " | seed study |", "|---|---|" + "---|" * (prim["sweep"].nunique() + 1)]
    for (det, score), g in prim.groupby(["detector", "score"], sort=False):
        base = g.loc[g["sweep"] == 0, "auroc_mean"]
        if base.empty:
            continue
        cells = [f"{a:.3f}" if v == 0 else f"{a - float(base.iloc[0]):+.3f}" for v, a in sorted(zip(g["sweep"], g["auroc_mean"]))]
        ref = refs.get((det, score))
        seed_fig = f"{ref['auroc']:+.2f} ({ref['source']})" if ref else ""
        lines.append(f"| {det} | {score} | " + " | ".join(cells) + f" | {seed_fig} |")
    return lines + [""]


def write_markdown(out: Path, title_note: str = "") -> Path:
    """Rebuild ``<out>/BENCHMARKS.md`` from every ``<out>/bench/*.json`` protocol result."""
    docs = [json.loads(p.read_text()) for p in sorted((out / "bench").glob("*.json"))]
    docs.sort(key=lambda d: d.get("order", 0))
    parts = ["# Benchmarks", "",
             "Generated by `pipeline bench` from the protocols in `configs/bench/` (do not edit by hand). "
             "Every number below was measured by the command printed under its table. Data: `../shared/data` (see its README for the protocols).",
             "The primary score of each detector is in bold. No hyper-parameter, epoch or score was chosen on test data; each protocol states its selection rule.", ""]
    if title_note:
        parts += [title_note, ""]
    for d in docs:
        figs = [f for f in (f"{d['slug']}_roc.png", f"{d['slug']}_density.png") if (out / "bench" / f).exists()]
        parts.append(protocol_markdown(d, figs, "bench/"))
    path = out / "BENCHMARKS.md"
    io.write_text(path, "\n".join(parts))
    return path


def run_bench(configs: list[Path], data_root: Path | None, out: Path, runs_root: Path, quick: bool, jobs: int, only: list[str] | None, repeats: int | None = None) -> Path:
    """``pipeline bench``: every protocol in turn; each protocol's result is saved as soon as it finishes."""
    (out / "bench").mkdir(parents=True, exist_ok=True)
    _commit()  # the code that ran is the code at the start, whatever is committed meanwhile
    t0 = time.perf_counter()
    for path in configs:
        doc = run_protocol(path, data_root, runs_root, quick, jobs, only, repeats)
        io.write_json(out / "bench" / f"{doc['slug']}.json", doc)
        plot_protocol(doc, out / "bench")
        md = write_markdown(out)
        print(f"[bench] {doc['protocol']} done in {doc['wall_s'] / 60:.1f} min; wrote {md}", file=sys.stderr, flush=True)
    print(f"[bench] all protocols: {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    return out / "BENCHMARKS.md"
