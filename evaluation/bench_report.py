"""Benchmark results: per-protocol summaries of finished runs, their plots, and ``BENCHMARKS.md``.

``pipeline bench`` (:mod:`pipeline.bench`) plans and runs the protocols; this module reads the
finished runs' tables (``scores.csv``, ``metrics.json``), aggregates them per detector and score
over seeds or folds (mean ± std, pooled bootstrap CI, LR protocol, AUPRC, sensitivity), draws the
ROC and density figures with :mod:`evaluation.plots`, and writes the markdown tables.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from evaluation.ensemble import ensemble_scores
from evaluation.map_ensemble import ct_map_metrics, ensemble_maps
from evaluation.metrics import detection_metrics
from evaluation.plots import plot_density_grid, plot_roc_curves
from evaluation.wholescan_report import wholescan_markdown, wholescan_summary
from pipeline.core import artifacts, io
from pipeline.core.errors import StageError
from pipeline.core.manifest import library_versions, now
from pipeline.core.schema import Config

CI_MAX_TEST = 300  # a repeat with fewer test samples than this also gets a pooled bootstrap CI


class RunKey(Protocol):
    """What a summary needs to know of a planned run."""

    detector: str
    sweep: float | None
    repeat: int


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _test_table(run_dir: Path, split: str) -> pd.DataFrame:
    scores = artifacts.read_scores(run_dir)
    samples = artifacts.read_samples(run_dir).set_index("sample_id")
    test = scores[scores["split"] == split].copy()
    if "class" in samples.columns:
        test["class"] = samples.loc[test["sample_id"], "class"].to_numpy()
    return test


def _metrics(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, n_boot: int, seed: int = 0) -> dict:
    return detection_metrics(labels, scores, n_boot, 0.95, seed, groups)


def summarise(cfg: Config, path: Path, specs: list[RunKey], results: dict[str, list[dict]], quick: bool, jobs: int, wall_s: float) -> dict:
    """The protocol's result document: one row per (detector or ensemble, score[, sweep value][, view]), curves, failures."""
    bench = cfg.bench
    records = {(r["detector"], r["sweep"], r["repeat"]): r for recs in results.values() for r in recs}
    groups: dict[tuple[str, float | None], list[dict]] = {}
    for s in specs:
        groups.setdefault((s.detector, s.sweep), []).append(records[(s.detector, s.sweep, s.repeat)])
    failures = [{"detector": r["detector"], "sweep": r["sweep"], "repeat": r["repeat"], "error": r["error"], "run_dir": r["run_dir"]}
                for reps in groups.values() for r in reps if "error" in r]
    dets = {d.label: d for d in bench.detectors}
    rows, curves, wholescan = [], [], []
    for (label, sweep), reps in groups.items():
        reps = [r for r in reps if "error" not in r]
        if reps and sweep is None:
            ws = wholescan_summary(label, reps)
            wholescan += [ws] if ws else []
        if reps:
            tables = [_test_table(Path(r["run_dir"]), "test").assign(repeat=r["repeat"]) for r in reps]
            metrics = artifacts.read_json("metrics", Path(reps[0]["run_dir"]))
            _add_rows(bench, label, sweep, reps, tables, metrics["primary_score"], dets[label].scores or list(metrics["scores"]), rows, curves)
    for ens in bench.ensembles:
        for sweep in sorted({s for _, s in groups}, key=lambda v: -1 if v is None else v):
            member_reps = [[r for r in groups.get((m, sweep), []) if "error" not in r] for m in ens.members]
            by_repeat = [dict((r["repeat"], r) for r in reps) for reps in member_reps]
            common = sorted(set.intersection(*[set(d) for d in by_repeat])) if by_repeat else []
            if sweep is None:
                ws = wholescan_summary(ens.label, _map_ensemble_records(ens, member_reps))
                wholescan += [ws] if ws else []
            if not common:
                continue
            members = [[d[k] for d in by_repeat] for k in common]
            try:
                tables = [_ensemble_table(ens, m).assign(repeat=k) for k, m in zip(common, members)]
            except StageError:  # the members scored different samples (e.g. cubes of other sizes): a map ensemble only
                continue
            _add_rows(bench, ens.label, sweep, [_ensemble_record(ens, m) for m in members], tables, "ensemble", ["ensemble"], rows, curves)
    return {"protocol": bench.protocol, "order": bench.order, "slug": slug(bench.protocol or path.stem), "config": str(path),
            "description": bench.description, "selection": bench.selection, "repeat": bench.repeat, "sweep_key": bench.sweep_key,
            "quick": quick, "jobs": jobs, "wall_s": wall_s,
            "run_time_s": float(sum(r["train_s"] + r["score_s"] for r in records.values() if "error" not in r)),
            "finished": now(), "command": _command(), "commit": git_commit(), "machine": _machine(),
            "references": [{"detector": r.detector, "score": r.score, "auroc": r.auroc, "source": r.source} for r in bench.references],
            "ensembles": [{"label": e.label, "members": list(e.members), "method": e.method} for e in bench.ensembles],
            "rows": rows, "curves": curves, "wholescan": wholescan, "failures": failures}


def carry_over(doc: dict, previous: dict | None, labels: list[str]) -> dict:
    """``--only``: the protocol's other detectors keep their rows from the previously published document.

    Rows, curves, whole-scan summaries and failures of every detector of ``labels`` (the protocol's
    configured detectors and ensembles, in order) that this invocation did not run are copied from
    ``previous``, which must be the same protocol and mode (full or quick). ``doc["carried"]`` names
    each carried detector with the commit and command that measured it, so the table says so.
    """
    if not previous or previous.get("slug") != doc["slug"] or bool(previous.get("quick")) != bool(doc["quick"]):
        return doc
    ran = {r["detector"] for key in ("rows", "wholescan", "failures") for r in doc[key]}
    keep = [lab for lab in labels if lab not in ran]
    order = {lab: i for i, lab in enumerate(labels)}
    carried = {c["detector"]: c for c in previous.get("carried", [])}
    out = dict(doc)
    for key in ("rows", "curves", "wholescan", "failures"):
        merged = doc[key] + [r for r in previous.get(key, []) if r["detector"] in keep]
        out[key] = sorted(merged, key=lambda r: order.get(r["detector"], len(order)))  # stable: scores keep their order
    present = {r["detector"] for key in ("rows", "wholescan", "failures") for r in previous.get(key, []) if r["detector"] in keep}
    out["carried"] = [carried.get(lab, {"detector": lab, "commit": previous["commit"], "command": previous["command"],
                                        "finished": previous["finished"]}) for lab in keep if lab in present]
    return out


def _rate(reps: list[dict]) -> float | None:
    """Samples scored per second of the score stage (all scored splits), mean over repeats; None when unknown (older runs)."""
    rates = [r["scored"] / r["score_s"] for r in reps if r.get("scored") and r.get("score_s")]
    return float(np.mean(rates)) if rates else None


def _ensemble_record(ens, member_records: list[dict]) -> dict:
    """A run record for an ensemble: times and memory of its members (summed; the largest peak)."""
    return {"repeat": member_records[0]["repeat"], "run_dir": member_records[0]["run_dir"],
            "train_s": sum(r["train_s"] for r in member_records), "score_s": sum(r["score_s"] for r in member_records),
            "train_details": {}, "scored": member_records[0].get("scored"),
            "train_counts": member_records[0]["train_counts"] | {"parameters": sum(r["train_counts"].get("parameters") or 0 for r in member_records)},
            "peak_rss_mb": max(r["peak_rss_mb"] for r in member_records)}


def _map_ensemble_records(ens, member_reps: list[list[dict]]) -> list[dict]:
    """The members' whole-scan maps combined (:mod:`evaluation.map_ensemble`), one run record per run of the first
    member, written to ``<protocol runs>/_ensembles/<label>/<its repeat>``; none unless every run mapped CT series.

    Runs are paired by the series they mapped, not by fold number: members with other data sections (cube size,
    background) may number the same leave-one-out folds differently."""
    metrics = [[ct_map_metrics(Path(r["run_dir"])) for r in reps] for reps in member_reps]
    if not member_reps or any(m is None for ms in metrics for m in ms):
        return []
    mapped = [[frozenset(m["series_seconds"]) for m in ms] for ms in metrics]  # the series each run mapped
    others = [dict(zip(keys, reps)) for keys, reps in zip(mapped[1:], member_reps[1:])]
    out = []
    for first, key in zip(member_reps[0], mapped[0]):
        if all(key in o for o in others):
            recs = [first] + [o[key] for o in others]
            dirs = [Path(r["run_dir"]) for r in recs]
            dest = dirs[0].parent.parent / "_ensembles" / slug(ens.label) / dirs[0].name
            ensemble_maps(dirs, dest, ens.method)
            out.append({"run_dir": str(dest), "train_s": sum(r["train_s"] for r in recs)})
    return out


def _ensemble_table(ens, member_records: list[dict]) -> pd.DataFrame:
    """The test rows of one repeat with the ensemble score of the members' runs (no test label is read)."""
    table = ensemble_scores([Path(r["run_dir"]) for r in member_records], ens.method)
    test = table[table["split"] == "test"].copy()
    if "class" not in test.columns:
        samples = artifacts.read_samples(Path(member_records[0]["run_dir"])).set_index("sample_id")
        if "class" in samples.columns:
            test["class"] = samples.loc[test["sample_id"], "class"].to_numpy()
    return test


def _add_rows(bench, label: str, sweep: float | None, reps: list[dict], tables: list[pd.DataFrame], primary: str, score_cols: list[str],
              rows: list[dict], curves: list[dict]) -> None:
    """Append the rows (each score × view) and the primary score's curve of one detector at one sweep value."""
    refs = {(r.detector, r.score): r for r in bench.references}
    for view in [None] + list(bench.views):
        for col in score_cols:
            row = _score_row(bench, label, col, sweep, view, reps, tables)
            if row is None:
                continue
            row["primary"] = col == primary
            ref = refs.get((label, col))
            if ref is not None and view is None and sweep is None:  # in a sweep the figure is a change: the drop table shows it
                row.update(reference=ref.auroc, reference_source=ref.source)
            rows.append(row)
            if col == primary and view is None:
                src = pd.concat(tables) if bench.repeat == "folds" else _view(tables[0], None)
                curves.append({"detector": label, "score": col, "sweep": sweep, "labels": src["label"].to_numpy().tolist(),
                               "scores": src[col].to_numpy(float).tolist()})


def _score_row(bench, label: str, col: str, sweep: float | None, view, reps: list[dict], tables: list[pd.DataFrame]) -> dict | None:
    """Metrics of one score over the repeats (mean ± std, LR protocol, AUPRC, ...) and a pooled bootstrap CI for small test sets."""
    per_rep, pooled_parts = [], []
    for t in tables:
        t = _view(t, view)
        if t["label"].nunique() < 2:
            continue
        per_rep.append(_metrics(t["label"].to_numpy(), t[col].to_numpy(), t["patient_id"].to_numpy(str), 0))
        pooled_parts.append(t)
    if not per_rep:
        return None
    auc = np.array([m["auroc"] for m in per_rep])
    mean = lambda key: float(np.mean([m[key] for m in per_rep]))  # noqa: E731
    row = {"detector": label, "score": col, "sweep": None if sweep is None else float(sweep), "view": view.label if view else "",
           "n_repeats": len(per_rep), "auroc_mean": float(auc.mean()), "auroc_std": float(auc.std(ddof=1)) if len(auc) > 1 else None,
           "auroc_each": [round(float(a), 4) for a in auc],
           "lr_cv_auroc_mean": float(np.mean([m["lr_protocol"].get("cv_auroc", np.nan) for m in per_rep])),
           "lr_fitted_auroc_mean": float(np.mean([m["lr_protocol"]["fitted_auroc"] for m in per_rep])),
           "auprc_mean": mean("auprc"), "sens95_mean": mean("sens_at_95_spec"),
           "n_test_normal": int(mean("n_normal")), "n_test_anomalous": int(mean("n_anomalous")),
           "train_s_mean": float(np.mean([r["train_s"] for r in reps])), "score_s_mean": float(np.mean([r["score_s"] for r in reps])),
           "epochs_run": [r["train_details"].get("epochs_run") for r in reps], "best_epoch": [r["train_details"].get("best_epoch") for r in reps],
           "train_samples": reps[0]["train_counts"].get("train_samples"), "parameters": reps[0]["train_counts"].get("parameters"),
           "scored_per_s": _rate(reps), "peak_rss_mb": max(r["peak_rss_mb"] for r in reps)}
    if bench.repeat == "folds" or len(tables[0]) < CI_MAX_TEST:
        src = pd.concat(pooled_parts) if bench.repeat == "folds" else _view(tables[0], view)
        m = _metrics(src["label"].to_numpy(), src[col].to_numpy(), src["patient_id"].to_numpy(str), 1000)
        row.update(ci_what="pooled out-of-fold" if bench.repeat == "folds" else "repeat 0", ci_auroc=m["auroc"], ci=m["auroc_ci"],
                   ci_unit=m["bootstrap_unit"])
    return row


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
def git_commit() -> str:
    """The git commit the benchmark started from (read once, at the start), marked when code differs from it."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + (" (with uncommitted changes)" if code_changed(repo) else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_changed(repo: Path) -> bool:
    """Whether tracked files outside ``docs/`` differ from HEAD (the benchmark itself rewrites
    docs/BENCHMARKS.md and docs/bench/, which say nothing about the code that ran)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs"], cwd=repo,
                         capture_output=True, text=True, timeout=10).stdout
    return bool(out.strip())


def _machine() -> str:
    """The machine line under each table (torch's version from its metadata: this process need not import it)."""
    gpu = "NVIDIA GPU" if Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir()) else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {library_versions().get('torch')}, {gpu}, Python {platform.python_version()}"


# ---------------------------------------------------------------------------------------------
# Publishing: plots and BENCHMARKS.md
# ---------------------------------------------------------------------------------------------


def plot_protocol(doc: dict, out_dir: Path) -> list[str]:
    """ROC curves and score densities of each detector's primary score; returns the PNG names."""
    curves = doc["curves"]
    if not curves:
        return []
    name = doc["slug"]
    what = "pooled out-of-fold test scores" if doc["repeat"] == "folds" else "repeat 0 test set"
    tags = [c["detector"] + (f" @ {c['sweep']:g}" if c["sweep"] is not None else "") + f" · {c['score']}" for c in curves]
    plot_roc_curves([(t, c["labels"], c["scores"]) for t, c in zip(tags, curves)], out_dir / f"{name}_roc.png",
                    f"{doc['protocol']}: ROC ({what})", "detector · score: AUROC")
    plot_density_grid([(t, c["labels"], c["scores"]) for t, c in zip(tags, curves)], out_dir / f"{name}_density.png",
                      f"{doc['protocol']}: score densities ({what})")
    return [f"{name}_roc.png", f"{name}_density.png"]


def _fmt(v, nd: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def protocol_markdown(doc: dict, figures: list[str], fig_prefix: str) -> str:
    rows = pd.DataFrame(doc["rows"])
    if doc.get("sweep_key") and not rows.empty:  # older result files stored numpy sweep values as strings
        rows["sweep"] = pd.to_numeric(rows["sweep"])
    lines = [f"## {doc['protocol']}", "", doc["description"].strip(), ""]
    if rows.empty:
        return "\n".join(lines + [f"**Failed run**: {f['detector']}, repeat {f['repeat']}: {f['error']}" for f in doc.get("failures", [])] + [""])
    if doc["selection"]:
        lines += [f"**Selection rule (no test data).** {doc['selection'].strip()}", ""]
    per = "fold" if doc["repeat"] == "folds" else "seed"
    lines += [f"AUROC is the mean ± std over {int(rows['n_repeats'].max())} {per}s (each {per}'s test set scored by its own model)."
              + (" The CI column is the percentile bootstrap 95% CI (1000 resamples) of the "
                 + ("pooled out-of-fold scores." if doc["repeat"] == "folds" else "repeat-0 test set.") if "ci" in rows else ""),
              "LR-CV is the seeds' logistic-regression protocol (5-fold cross-validated probabilities from the 1-D score). "
              "Times are per run (mean over repeats): train = the train stage, score = the score stage (scored/s: samples of all "
              "scored splits per second of it); params = trainable parameters (fitted models without parameters: –); "
              "peak RSS is that of the detector's process while it trained, scored and evaluated (from the run manifests).", ""]
    sweep = doc.get("sweep_key")
    for view, vrows in rows.groupby("view", sort=False):
        if view:
            lines += [f"### View: {view}", ""]
        head = ["detector", "score"] + ([sweep.split(".")[-1]] if sweep else []) + ["AUROC (mean ± std)"] + \
               (["AUROC [95% CI]"] if "ci" in vrows else []) + \
               ["LR-CV AUROC", "AUPRC", "sens@95%spec", "params", "train s", "score s", "scored/s", "peak MB", "published"]
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
            cells += [_fmt(r["lr_cv_auroc_mean"]), _fmt(r["auprc_mean"]), _fmt(r["sens95_mean"]), _params(r.get("parameters")),
                      f"{r['train_s_mean']:.0f}", f"{r['score_s_mean']:.1f}", _per_s(r.get("scored_per_s")),
                      f"{r['peak_rss_mb']:.0f}", (f"{ref:.2f} ({r['reference_source']})" if isinstance(ref, float) and np.isfinite(ref) else "")]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    lines += wholescan_markdown(doc.get("wholescan", []))
    if sweep:
        lines += _sweep_drop_table(rows[rows["view"] == ""], sweep, {(r["detector"], r["score"]): r for r in doc.get("references", [])})
    n_tr = rows.groupby("detector")["train_samples"].first()
    sizes = rows.groupby("detector", sort=False)[["n_test_normal", "n_test_anomalous"]].first().astype(int)
    # detectors with their own data sections (cube size, background) have their own test counts
    test = (f"{sizes.iloc[0, 0]} normal, {sizes.iloc[0, 1]} anomalous" if len(sizes.drop_duplicates()) == 1 else
            "; ".join(f"{d} {n} normal, {a} anomalous" for d, (n, a) in sizes.iterrows()))
    lines += [f"Test set per {per}: {test}. "
              f"Training samples per run: " + ", ".join(f"{d} {int(n)}" for d, n in n_tr.items() if pd.notna(n)) + ".", ""]
    for fail in doc.get("failures", []):
        lines.append(f"**Failed run** (left out of the table): {fail['detector']}, repeat {fail['repeat']}: {fail['error']}")
    for f in figures:
        lines.append(f"![{f}]({fig_prefix}{f})")
    for c in doc.get("carried", []):
        lines.append(f"Rows of **{c['detector']}** carried over from `{c['command']}` at commit `{c['commit']}`, finished {c['finished']}.")
    lines += ["", f"Run: `{doc['command']}` at commit `{doc['commit']}`, finished {doc['finished']}, {doc['wall_s'] / 60:.1f} min wall "
              f"for this invocation ({doc['machine']}; {doc['jobs']} job(s) at a time){'; QUICK mode (reduced size)' if doc['quick'] else ''}. "
              f"Training and scoring of all its runs, resumed ones included, sum to {doc.get('run_time_s', float('nan')) / 60:.1f} min.", ""]
    return "\n".join(lines)


def _params(n) -> str:
    """Parameter count as 191k / 1.54M; – for fitted (closed-form) models."""
    if n is None or not np.isfinite(float(n)) or float(n) == 0:
        return "–"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _per_s(rate) -> str:
    return "–" if rate is None or not np.isfinite(float(rate)) else f"{rate:.0f}"


def _sweep_drop_table(rows: pd.DataFrame, sweep: str, refs: dict) -> list[str]:
    prim = rows[rows["primary"]]
    lines = [f"AUROC of each detector's primary score at {sweep.split('.')[-1]} = 0, then its change at each level (mean over repeats):", "",
             "| detector | score | " + " | ".join(f"{v:g}" for v in sorted(prim["sweep"].unique())) + " | published |",
             "|---|---|" + "---|" * (prim["sweep"].nunique() + 1)]
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
             "The primary score of each detector is in bold. "
             "No hyper-parameter, epoch or score was chosen on test data; each protocol states its selection rule.", ""]
    if title_note:
        parts += [title_note, ""]
    for d in docs:
        figs = [f for f in (f"{d['slug']}_roc.png", f"{d['slug']}_density.png") if (out / "bench" / f).exists()]
        parts.append(protocol_markdown(d, figs, "bench/"))
    path = out / "BENCHMARKS.md"
    io.write_text(path, "\n".join(parts))
    return path
