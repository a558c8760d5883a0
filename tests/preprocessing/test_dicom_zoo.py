"""``pipeline ingest`` over every DICOM file that ships with pydicom and pydicom-data, in one folder.

No traceback; each file is ingested, ignored (plainly not an image) or named once with a reason,
and the outcome of each file is the one checked in (tests/data/dicom_zoo_outcomes.csv; see
tests/dicom_zoo.py to regenerate it after a deliberate change).
"""

from __future__ import annotations

import pandas as pd
import pytest
from dicom_zoo import EXPECTED, build_zoo, outcomes, run_ingest


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    base = tmp_path_factory.mktemp("zoo")
    files = build_zoo(base / "in")
    proc = run_ingest(base / "in", base / "run")
    return base / "in", base / "run", files, proc


def test_the_zoo_ingests_without_a_traceback_and_library_warnings_are_kept_with_their_file(zoo):
    root, run, files, proc = zoo
    assert proc.returncode == 1, proc.stderr  # item errors, but the run finished
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Warning:" not in proc.stderr, proc.stderr  # no raw library warning on the terminal
    warned = pd.read_csv(run / "warnings.csv", dtype=str)
    assert len(warned) and set(warned["item"]) <= {str(root / f) for f in files}
    assert not warned.duplicated().any()  # once each
    assert sum("are not images and were ignored" in line for line in proc.stderr.splitlines()) == 1


def test_each_file_is_ingested_or_named_once_with_its_expected_outcome(zoo):
    root, run, files, _ = zoo
    errors = pd.read_csv(run / "errors.csv", dtype=str)
    ignored = pd.read_csv(run / "ignored.csv", dtype=str)
    named = list(errors["item"]) + list(ignored["item"])
    assert len(named) == len(set(named)), "a file is named twice"
    got = outcomes(root, run, files)
    assert (got["outcome"] != "missing").all(), got[got["outcome"] == "missing"]
    want = pd.read_csv(EXPECTED, dtype=str, keep_default_na=False)
    want = want[want["file"].isin(set(files))]  # without pydicom-data, its rows are not expected
    assert len(want) == len(got), sorted(set(got["file"]) ^ set(want["file"]))
    diff = got.merge(want, on="file", how="outer", suffixes=("_got", "_expected"))
    diff = diff[(diff["outcome_got"] != diff["outcome_expected"]) | (diff["reason_got"] != diff["reason_expected"])]
    assert diff.empty, diff.to_string()
    assert (got["outcome"] == "ingested").sum() == 31  # the bundled LIDC crop, whole
