"""Nodule table: CSV of nodule centres in patient coordinates (DICOM LPS, mm).

Required columns: ``x_mm, y_mm, z_mm`` and either ``series_uid`` or a ``patient_id`` that has a
single ingested series. Optional: ``nodule_id``, ``patient_id``, a malignancy column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import StageError

REQUIRED = ("x_mm", "y_mm", "z_mm")


def read_nodules(path: Path, series: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Read and check the table; attach each nodule to an ingested series.

    Returns ``(nodules, errors)``; a nodule whose series was not ingested or whose coordinates
    are not finite numbers, or whose patient has no single ingested series, becomes an
    ``(item, message)`` error and is dropped. A table without the coordinate columns, or with
    neither ``series_uid`` nor ``patient_id``, is unusable: :class:`StageError` naming the columns.
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
    for col in ("series_uid", "patient_id"):
        if col not in table.columns:
            table[col] = None
    known = dict(zip(series["series_uid"], series["patient_id"]))
    per_patient = series.groupby("patient_id")["series_uid"].agg(list).to_dict()
    errors, keep, uids = [], [], []
    for i, row in table.iterrows():
        item = f"nodule {row['nodule_id']}"
        try:
            xyz = row[list(REQUIRED)].to_numpy(dtype=float)
        except ValueError:
            xyz = np.full(3, np.nan)
        uid, patient = row["series_uid"], row["patient_id"]
        if pd.isna(uid):  # no series given: the patient's only ingested series
            uid = per_patient[patient][0] if len(per_patient.get(patient, [])) == 1 else None
        if not np.all(np.isfinite(xyz)):
            errors.append((item, f"{path}: {item} has non-numeric or non-finite coordinates {row[list(REQUIRED)].tolist()}"))
        elif uid is None and pd.isna(patient):
            errors.append((item, f"{path}: {item} names neither a series_uid nor a patient_id"))
        elif uid is None:
            n = len(per_patient.get(patient, []))
            errors.append((item, f"{path}: {item} has no series_uid and patient {patient} has {n} ingested series"
                                 + ("" if n else " (unknown patient ID)") + "; give its series_uid"))
        elif uid not in known:
            errors.append((item, f"{path}: {item} refers to series {uid}, which is not among the ingested series "
                                 "(unknown ID, or the series failed ingest)"))
        else:
            keep.append(i)
            uids.append(uid)
    table = table.loc[keep].copy()
    table["series_uid"] = uids
    table["patient_id"] = table["patient_id"].fillna(table["series_uid"].map(known))
    return table.reset_index(drop=True), errors
