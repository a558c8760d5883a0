"""The nodule table: one table for many series is normal; its nodules of other scans are one note."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.core.errors import StageError
from preprocessing.nodules import read_nodules

SERIES = pd.DataFrame({"series_uid": ["1.2.3", "1.2.4"], "patient_id": ["A", "B"]})


def _table(tmp_path, rows) -> object:
    path = tmp_path / "nodules.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_nodules_of_series_not_in_the_input_are_one_note(tmp_path):
    path = _table(tmp_path, [
        {"nodule_id": "a1", "series_uid": "1.2.3", "x_mm": 1, "y_mm": 2, "z_mm": 3},
        {"nodule_id": "x1", "series_uid": "9.9.1", "x_mm": 1, "y_mm": 2, "z_mm": 3},
        {"nodule_id": "x2", "series_uid": "9.9.1", "x_mm": 4, "y_mm": 5, "z_mm": 6},
        {"nodule_id": "y1", "series_uid": "9.9.2", "x_mm": 1, "y_mm": 2, "z_mm": 3},
        {"nodule_id": "p1", "patient_id": "NOT-HERE", "x_mm": 1, "y_mm": 2, "z_mm": 3},
    ])
    table, errors, notes = read_nodules(path, SERIES)
    assert list(table["nodule_id"]) == ["a1"] and errors == []
    assert len(notes) == 1 and notes[0].startswith(f"4 nodule(s) of {path} belong to 3 scan(s) not among the ingested series")


def test_they_are_errors_when_no_nodule_matches_and_a_failed_series_stays_an_error(tmp_path):
    path = _table(tmp_path, [{"nodule_id": "x1", "series_uid": "9.9.1", "x_mm": 1, "y_mm": 2, "z_mm": 3},
                             {"nodule_id": "f1", "series_uid": "7.7.7", "x_mm": 1, "y_mm": 2, "z_mm": 3}])
    table, errors, notes = read_nodules(path, SERIES, failed=frozenset({"7.7.7"}))
    assert table.empty and notes == []
    errors = dict(errors)
    assert sorted(errors) == ["nodule f1", "nodule x1"]
    assert "9.9.1, which is not among the ingested series" in errors["nodule x1"] and "7.7.7, which failed ingest" in errors["nodule f1"]
    path = _table(tmp_path, [{"nodule_id": "a1", "series_uid": "1.2.3", "x_mm": 1, "y_mm": 2, "z_mm": 3},
                             {"nodule_id": "f1", "series_uid": "7.7.7", "x_mm": 1, "y_mm": 2, "z_mm": 3}])
    table, errors, notes = read_nodules(path, SERIES, failed=frozenset({"7.7.7"}))
    assert list(table["nodule_id"]) == ["a1"] and [e[0] for e in errors] == ["nodule f1"] and notes == []


def test_a_table_without_coordinates_is_unusable(tmp_path):
    path = _table(tmp_path, [{"nodule_id": "a1", "series_uid": "1.2.3", "x_mm": 1}])
    with pytest.raises(StageError, match="missing column"):
        read_nodules(path, SERIES)
