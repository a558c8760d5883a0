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


def read_nodules(path: Path, series: pd.DataFrame, failed: frozenset[str] = frozenset()) -> tuple[pd.DataFrame, list[tuple[str, str]], list[str]]:
    """Read and check the table; attach each nodule to an ingested series.

    Returns ``(nodules, errors, notes)``. A table that covers more series than were ingested is
    normal (one LIDC table for a whole collection): its nodules of other series are skipped with
    one note, and are errors only when *no* nodule of the table matches an ingested series. A
    nodule of a series in ``failed`` (found in the input, but its ingest failed) is an error. A
    nodule whose coordinates are not finite numbers, or whose patient has several ingested series
    and no series_uid, is an ``(item, message)`` error and is dropped. A table without the
    coordinate columns, or with neither ``series_uid`` nor ``patient_id``, is unusable:
    :class:`StageError` naming the columns.
    """
    table = _read_table(path)
    known = dict(zip(series["series_uid"], series["patient_id"]))
    per_patient = series.groupby("patient_id")["series_uid"].agg(list).to_dict()
    errors, keep, uids = [], [], []
    elsewhere: list[tuple[str, str]] = []  # nodules of series (or patients) that were not ingested
    other_scans: set[str] = set()
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
        elif uid is None and per_patient.get(patient):
            errors.append((item, f"{path}: {item} has no series_uid and patient {patient} has {len(per_patient[patient])} "
                                 "ingested series; give its series_uid"))
        elif uid is None:
            other_scans.add(f"patient {patient}")
            elsewhere.append((item, f"{path}: {item} has no series_uid and its patient {patient} has no ingested series "
                                    "(not in the input, or its series failed ingest)"))
        elif uid in failed:
            errors.append((item, f"{path}: {item} refers to series {uid}, which failed ingest (see its line in errors.csv)"))
        elif uid not in known:
            other_scans.add(f"series {uid}")
            elsewhere.append((item, f"{path}: {item} refers to series {uid}, which is not among the ingested series "
                                    "(not in the input)"))
        else:
            keep.append(i)
            uids.append(uid)
    notes = []
    if elsewhere and keep:
        notes.append(f"{len(elsewhere)} nodule(s) of {path} belong to {len(other_scans)} scan(s) not among the ingested series "
                     f"and were skipped (e.g. {elsewhere[0][1].split(': ', 1)[1]})")
    else:
        errors += elsewhere
    table = table.loc[keep].copy()
    table["series_uid"] = uids
    table["patient_id"] = table["patient_id"].fillna(table["series_uid"].map(known))
    return table.reset_index(drop=True), errors, notes


def _read_table(path: Path) -> pd.DataFrame:
    """The CSV with its required columns checked and ``nodule_id``, ``series_uid``, ``patient_id`` present."""
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
    return table
