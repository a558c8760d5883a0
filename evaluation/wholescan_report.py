"""Whole-scan benchmark results: FROC and CPM pooled over the folds of a leave-one-series-out protocol.

Each fold's ``map`` stage wrote its mapped series' candidates (``candidates.csv``: LPS mm, score) and
per-nodule results (``map_metrics.json``: centre, hit radius, rank and distance of the nearest
candidate, map value and percentile). Here the candidates of every fold are ranked together (the
map values of the folds' models are on the same scale: the sigmoid output of one architecture, or
the same statistic) and :func:`evaluation.froc.froc` gives the pooled sensitivities at 1/8 … 8 false
candidates per scan and their mean, the CPM; each scan also gets its own CPM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.froc import FP_RATES, froc, froc_per_scan, rate_key
from pipeline.core import artifacts

TOP_K = 8  # "ranked in its scan's top 8": the reader budget
MIN_DIAMETER_MM = 6.0  # nodules this large must be found (the LUNA16 size for actionable nodules)


def _fold(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict] | None:
    """One fold's candidates, nodules (with their results) and map metrics; None when it did not map CT series."""
    metrics = artifacts.read_json("map_metrics", run_dir)
    if not metrics or metrics.get("kind") == "images" or not artifacts.path("candidates", run_dir).exists():
        return None
    cands = pd.read_csv(artifacts.path("candidates", run_dir))
    nodules = pd.DataFrame(metrics.get("nodules", []))
    return cands, nodules, metrics


def wholescan_summary(label: str, reps: list[dict]) -> dict | None:
    """Pooled FROC/CPM of one detector's folds, per-scan CPMs, every nodule's rank and distance, and map times."""
    folds = [f for f in (_fold(Path(r["run_dir"])) for r in reps) if f is not None]
    if not folds:
        return None
    cands = pd.concat([c for c, _, _ in folds if len(c)], ignore_index=True) if any(len(c) for c, _, _ in folds) else pd.DataFrame()
    nodules = pd.concat([n for _, n, _ in folds if len(n)], ignore_index=True) if any(len(n) for _, n, _ in folds) else pd.DataFrame()
    n_scans = int(sum(m["pooled"].get("scans", 0) for _, _, m in folds))
    pooled = froc(cands, nodules, n_scans, hit_mm=float("nan")) if len(cands) and len(nodules) else {}
    per_scan = froc_per_scan(cands, nodules, hit_mm=float("nan")) if len(cands) and len(nodules) else {}
    rows = []
    for _, n in nodules.iterrows():
        first = n.get("first_hit_rank")
        rows.append({"series_uid": n["series_uid"], "nodule_id": n["nodule_id"], "diameter_mm": _num(n.get("diameter_mm")),
                     "malignancy": _num(n.get("malignancy_median")), "first_hit_rank": _num(first), "nearest_rank": _num(n.get("nearest_rank")),
                     "nearest_mm": _num(n.get("nearest_mm")), "map_percentile": _num(n.get("map_percentile"))})
    large = [r for r in rows if r["diameter_mm"] is not None and r["diameter_mm"] >= MIN_DIAMETER_MM]
    seconds = [s for _, _, m in folds for s in m.get("series_seconds", {}).values()]
    rated = pd.DataFrame(rows).dropna(subset=["malignancy", "map_percentile"]) if rows else pd.DataFrame()
    rho = (float(rated["map_percentile"].corr(rated["malignancy"], method="spearman"))
           if len(rated) >= 3 and rated["malignancy"].nunique() > 1 else None)
    return {"detector": label, "folds": len(folds), "scans": n_scans, "nodules": int(len(nodules)), "candidates": int(len(cands)),
            "pooled": pooled, "per_scan": {uid: v["cpm"] for uid, v in per_scan.items()}, "per_nodule": rows,
            f"large_in_top{TOP_K}": sum(1 for r in large if r["first_hit_rank"] is not None and r["first_hit_rank"] <= TOP_K),
            "large": len(large), "malignancy_spearman": rho, "map_s_per_scan": float(np.mean(seconds)) if seconds else None,
            "train_s_mean": float(np.mean([r["train_s"] for r in reps])) if reps else None}


def _num(v) -> float | None:
    v = pd.to_numeric(v, errors="coerce")
    return None if pd.isna(v) else float(v)


def wholescan_markdown(summaries: list[dict]) -> list[str]:
    """The FROC table (one row per detector) and each detector's per-nodule table."""
    if not summaries:
        return []
    rates = [rate_key(r) for r in FP_RATES]
    head = ["detector", *[f"{r:g} FP" for r in FP_RATES], "**CPM**", "CPM per scan", f"≥ {MIN_DIAMETER_MM:g} mm in top {TOP_K}",
            "map s / CT", "train s"]
    lines = ["### Whole-scan FROC (pooled over the folds)", "",
             "Sensitivity at each number of false candidates per scan, all folds' candidates ranked together (LUNA16); "
             "CPM = their mean. A candidate hits a nodule within its radius.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        p = s["pooled"]
        per = ", ".join(f"{artifacts.series_stem(uid)[-6:]} {v:.2f}" for uid, v in s["per_scan"].items())
        cells = [s["detector"], *[_f(p.get(k)) for k in rates], f"**{_f(p.get('cpm'))}**", per,
                 f"{s[f'large_in_top{TOP_K}']} / {s['large']}", _f(s["map_s_per_scan"], 1), _f(s["train_s_mean"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for s in summaries:
        rho = s.get("malignancy_spearman")
        lines += [f"Per nodule, {s['detector']} ({s['scans']} scans, {s['nodules']} nodules, {s['candidates']} candidates; "
                  f"Spearman correlation of the map percentile at the nodule with its median malignancy rating: {_f(rho, 2)}):", "",
                  "| nodule | diameter mm | malignancy | first hit rank | nearest candidate rank | nearest mm | map percentile |",
                  "|---|---|---|---|---|---|---|"]
        for r in s["per_nodule"]:
            lines.append(f"| {r['nodule_id']} | {_f(r['diameter_mm'], 1)} | {_f(r['malignancy'], 1)} | {_f(r['first_hit_rank'], 0)} | "
                         f"{_f(r['nearest_rank'], 0)} | {_f(r['nearest_mm'], 1)} | {_f(r['map_percentile'], 1)} |")
        lines.append("")
    return lines


def _f(v, nd: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"
