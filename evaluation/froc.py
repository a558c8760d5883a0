"""Free-response ROC of candidate lists against annotated nodules, and the LUNA16 CPM.

A candidate (LPS mm, with a score) is *true* when it lies within the radius of a nodule of its own
series (``diameter_mm / 2``, or ``hit_mm`` when the table gives no diameter). Candidates of all
scans are ranked by score together; each nodule counts once, at its first true candidate, and a
later candidate on an already found nodule is neither true nor false (the LUNA16 convention).
The sensitivity at ``r`` false candidates per scan is the share of nodules found before the number
of false candidates exceeds ``r · scans``; the CPM is the mean over ``FP_RATES``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FP_RATES = (0.125, 0.25, 0.5, 1, 2, 4, 8)  # false candidates per scan (LUNA16)
XYZ = ["x_mm", "y_mm", "z_mm"]


def rate_key(rate: float) -> str:
    """``sens_at_<rate>_fp`` with the rate written as in the tables: 0.125, 0.25, 0.5, 1, 2, …"""
    return f"sens_at_{rate:g}_fp"


def hit_radii(nodules: pd.DataFrame, hit_mm: float) -> np.ndarray:
    """Each nodule's hit radius (mm): ``radius_mm`` where the table gives one, else ``hit_mm``."""
    r = pd.to_numeric(nodules["radius_mm"], errors="coerce").to_numpy(float) if "radius_mm" in nodules else np.full(len(nodules), np.nan)
    return np.where(np.isfinite(r) & (r > 0), r, hit_mm)


def nodule_hits(cands: pd.DataFrame, nodules: pd.DataFrame, hit_mm: float) -> pd.DataFrame:
    """Per nodule of one series: the nearest candidate's rank (1 = highest score) and distance (mm), and the
    rank of the first candidate that hits it.

    ``cands``: that series' candidates (x_mm, y_mm, z_mm, rank); ``nodules``: its nodules (x_mm, y_mm,
    z_mm, radius_mm). A nodule with no candidate gets rank and distance None and no hit.
    """
    pts = cands[XYZ].to_numpy(float) if len(cands) else np.zeros((0, 3))
    ranks = cands["rank"].to_numpy(int) if len(cands) else np.zeros(0, int)
    rows = []
    for centre, radius in zip(nodules[XYZ].to_numpy(float), hit_radii(nodules, hit_mm)):
        if not len(pts):
            rows.append({"nearest_rank": None, "nearest_mm": None, "radius_mm": float(radius), "hit": False, "first_hit_rank": None})
            continue
        d = np.linalg.norm(pts - centre, axis=1)
        j = int(np.argmin(d))
        hits = np.flatnonzero(d <= radius)
        rows.append({"nearest_rank": int(ranks[j]), "nearest_mm": float(d[j]), "radius_mm": float(radius), "hit": bool(len(hits)),
                     "first_hit_rank": int(ranks[hits].min()) if len(hits) else None})
    return pd.DataFrame(rows, index=nodules.index)


def candidate_hits(cands: pd.DataFrame, nodules: pd.DataFrame, hit_mm: float) -> np.ndarray:
    """Per candidate: does it lie within the hit radius of any nodule of its own series (bool)."""
    out = np.zeros(len(cands), bool)
    if not len(cands) or not len(nodules):
        return out
    radii = hit_radii(nodules, hit_mm)
    xyz, uids = cands[XYZ].to_numpy(float), cands["series_uid"].to_numpy()
    for uid, rows in nodules.groupby("series_uid").indices.items():
        own = uids == uid
        d = np.linalg.norm(xyz[own][:, None] - nodules[XYZ].to_numpy(float)[rows][None], axis=2)
        out[own] = (d <= radii[rows][None]).any(axis=1)
    return out


def froc_curve(cands: pd.DataFrame, nodules: pd.DataFrame, n_scans: int, hit_mm: float) -> pd.DataFrame:
    """The FROC operating points: one row per candidate in score order, with ``fp_per_scan`` and ``sensitivity``
    after it (``true``: it found a new nodule; ``repeat``: it hit an already found one)."""
    cols = ["score", "series_uid", "true", "repeat", "fp_per_scan", "sensitivity"]
    if not len(cands):
        return pd.DataFrame(columns=cols)
    order = cands.sort_values("score", ascending=False, kind="stable")
    radii = pd.Series(hit_radii(nodules, hit_mm), index=nodules.index)
    by_series = {uid: (own[XYZ].to_numpy(float), radii.loc[own.index].to_numpy(), own.index.to_numpy())
                 for uid, own in nodules.groupby("series_uid")}
    found: set = set()
    fps, rows = 0, []
    for uid, xyz, score in zip(order["series_uid"], order[XYZ].to_numpy(float), order["score"].to_numpy(float)):
        hit: set = set()
        if uid in by_series:
            centres, radius, index = by_series[uid]
            hit = set(index[np.linalg.norm(centres - xyz, axis=1) <= radius].tolist())
        new = hit - found
        fps += not hit
        found |= hit
        rows.append((score, uid, bool(new), bool(hit) and not new, fps / max(n_scans, 1), len(found) / max(len(nodules), 1)))
    return pd.DataFrame(rows, columns=cols)


def froc(cands: pd.DataFrame, nodules: pd.DataFrame, n_scans: int, hit_mm: float, rates=FP_RATES) -> dict[str, float]:
    """Sensitivity at each of ``rates`` false candidates per scan, and ``cpm`` (their mean); NaN without nodules."""
    if not len(nodules):
        return {rate_key(r): float("nan") for r in rates} | {"cpm": float("nan")}
    curve = froc_curve(cands, nodules, n_scans, hit_mm)
    fp, sens = curve["fp_per_scan"].to_numpy(float), curve["sensitivity"].to_numpy(float)
    out = {rate_key(r): float(sens[fp <= r].max()) if (fp <= r).any() else 0.0 for r in rates}
    return out | {"cpm": float(np.mean(list(out.values())))}


def froc_per_scan(cands: pd.DataFrame, nodules: pd.DataFrame, hit_mm: float, rates=FP_RATES) -> dict[str, dict]:
    """:func:`froc` of each scan on its own (series UID → sensitivities and CPM, plus its nodule count)."""
    out = {}
    for uid in sorted(set(nodules["series_uid"]) | set(cands["series_uid"] if len(cands) else [])):
        own_c = cands[cands["series_uid"] == uid] if len(cands) else cands
        own_n = nodules[nodules["series_uid"] == uid]
        out[uid] = froc(own_c, own_n, 1, hit_mm, rates) | {"nodules": int(len(own_n))}
    return out
