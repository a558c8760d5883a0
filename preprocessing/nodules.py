"""Nodule table: CSV of nodule centres in patient coordinates (DICOM LPS, mm).

Required columns: ``x_mm, y_mm, z_mm`` and either ``series_uid`` or a ``patient_id`` that has a
single ingested series. Optional: ``nodule_id``, ``patient_id``, a malignancy column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import StageError

REQUIRED = ("x_mm", "y_mm", "z_mm")


def read_nodules(path: Path, series: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Read and check the table; attach each nodule to an ingested series.

    Returns ``(nodules, errors)``; a nodule whose series was not ingested or whose coordinates
    are not finite becomes an ``(item, message)`` error and is dropped.
    """
    if not path.exists():
        raise StageError(f"extract.nodules: file {path} does not exist")
    try:
        table = pd.read_csv(path, dtype={"patient_id": str, "series_uid": str, "nodule_id": str})
    except Exception as exc:  # noqa: BLE001 - pandas raises several types
        raise StageError(f"{path}: cannot read nodule CSV ({exc})") from None
    missing = [c for c in REQUIRED if c not in table.columns]
    if "series_uid" not in table.columns and "patient_id" not in table.columns:
        missing.append("series_uid (or patient_id)")
    if missing:
        raise StageError(f"{path}: missing column(s) {', '.join(missing)}; have {', '.join(table.columns)}")
    if "nodule_id" not in table.columns:
        table["nodule_id"] = [f"nodule{i:04d}" for i in range(len(table))]
    if "series_uid" not in table.columns:
        per_patient = series.groupby("patient_id")["series_uid"].agg(list)
        table["series_uid"] = [per_patient.get(p, [None])[0] if len(per_patient.get(p, [])) == 1 else None for p in table["patient_id"]]
    known = dict(zip(series["series_uid"], series["patient_id"]))
    errors, keep = [], []
    for i, row in table.iterrows():
        item = f"nodule {row['nodule_id']}"
        xyz = row[list(REQUIRED)].to_numpy(dtype=float)
        if not np.all(np.isfinite(xyz)):
            errors.append((item, f"{path}: {item} has non-finite coordinates {xyz.tolist()}"))
        elif row["series_uid"] not in known:
            errors.append((item, f"{path}: {item} refers to series {row['series_uid']}, which was not ingested"))
        else:
            keep.append(i)
    table = table.loc[keep].copy()
    table["patient_id"] = [known[s] for s in table["series_uid"]] if "patient_id" not in table.columns else table["patient_id"].fillna(table["series_uid"].map(known))
    return table.reset_index(drop=True), errors
