"""Fuzzed DICOM through ingest: every mutated file is read or one error line, never a traceback.

Each batch is the real sample series (good) plus seeded mutant series (:mod:`fuzz_dicom`), ingested
by ``pipeline ingest`` in a fresh process with ``ingest.min_slices: 2`` (the mutants are two-slice
series, so that mutated files reach validation, the size check, pixel decoding and file naming).
Checked per batch: exit code 1 (items failed, the run finished), no traceback, no error of an
unclassified type, every mutant accounted for (ingested, or named by an error line of its file or
its series), the good series' volume byte-identical to a clean run, and nothing written outside
the run folder. The fast suite runs one batch of 200; ``pytest -m slow tests/preprocessing/test_fuzz_dicom.py -s``
runs 10 batches (2,000 mutants) and prints the count per operator and outcome (docs/RELIABILITY.md).
"""

from __future__ import annotations

import collections
import json
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from conftest import ROOT, SAMPLE_CT, run_cli
from fuzz_dicom import make_batch

from pipeline.core.artifacts import series_stem

CONFIG = str(ROOT / "configs" / "ct_nodules_vae.yaml")
SETTINGS = ["--set", "ingest.min_slices=2"]


def _series_uids(files) -> set[str]:
    """The SeriesInstanceUIDs the mutant's files carry after mutation (as ingest would read them)."""
    uids = set()
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                uids.add(str(pydicom.dcmread(f, stop_before_pixels=True, force=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID))
        except Exception:  # noqa: BLE001 - an unreadable file has no UID to look for
            pass
    return uids


@pytest.fixture(scope="module")
def clean_volume(tmp_path_factory) -> tuple[str, bytes]:
    """The sample series ingested alone: its UID and volume bytes."""
    out = tmp_path_factory.mktemp("clean") / "run"
    proc = run_cli("ingest", CONFIG, "--out", str(out), *SETTINGS)
    assert proc.returncode == 0, proc.stderr
    uid = pd.read_csv(out / "series.csv", dtype=str)["series_uid"].iloc[0]
    return uid, (out / "volumes" / f"{uid}.nii.gz").read_bytes()


def fuzz_batch(tmp: Path, n: int, seed: int, clean: tuple[str, bytes]) -> dict[tuple[str, str], int]:
    """One batch; asserts the invariants and returns ``{(operator, outcome): count}``."""
    data, out = tmp / "input", tmp / "work" / "run"
    shutil.copytree(SAMPLE_CT / "LIDC-IDRI-0063", data / "good")
    mutants = make_batch(data / "mutants", n, seed)
    out.parent.mkdir(parents=True)
    before = sorted(p.name for p in tmp.iterdir())
    proc = run_cli("ingest", CONFIG, "--out", str(out), "--set", f"ingest.input={data}", *SETTINGS)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp.iterdir()) == before and sorted(p.name for p in (tmp / "work").iterdir()) == ["run"]
    errors = pd.read_csv(out / "errors.csv", dtype=str, keep_default_na=False)
    assert not errors["error"].str.contains(r": unexpected [A-Za-z]+(?:Error|Exception)").any(), errors[errors["error"].str.contains("unexpected")]
    items = set(errors["item"])
    ingested = set(pd.read_csv(out / "series.csv", dtype=str, keep_default_na=False)["series_uid"])
    good_uid, good_bytes = clean
    assert (out / "volumes" / f"{good_uid}.nii.gz").read_bytes() == good_bytes
    assert all((out / "volumes" / f"{series_stem(u)}.nii.gz").is_file() for u in ingested)
    counts: collections.Counter = collections.Counter()
    for m in mutants:
        uids = _series_uids(m.files)
        if uids & ingested:
            outcome = "ingested"
        elif any(str(f) in items for f in m.files):
            outcome = "file error"
        elif any(f"series {u}" in items for u in uids):
            outcome = "series error"
        else:
            raise AssertionError(f"{m.name}: neither ingested nor named by an error line (UIDs {uids})")
        counts[(m.operator, outcome)] += 1
    return counts


def test_fuzzed_files_are_read_or_one_error_line(tmp_path, clean_volume):
    counts = fuzz_batch(tmp_path, 200, seed=1, clean=clean_volume)
    outcomes = collections.Counter(o for (_, o), n in counts.items() for _ in range(n))
    assert sum(outcomes.values()) == 200 and outcomes["ingested"] > 0 and outcomes["file error"] > 0 and outcomes["series error"] > 0


@pytest.mark.slow
def test_two_thousand_fuzzed_files(tmp_path, clean_volume):
    total: collections.Counter = collections.Counter()
    for seed in range(10):
        total += fuzz_batch(tmp_path / f"b{seed}", 200, seed=100 + seed, clean=clean_volume)
    table = pd.Series(total).unstack(fill_value=0)
    print("\nfuzzed DICOM through ingest: mutants per operator and outcome\n" + table.to_string() + f"\ntotal {sum(total.values())}")
    (ROOT / "runs").mkdir(exist_ok=True)
    (ROOT / "runs" / "fuzz_dicom_counts.json").write_text(json.dumps({f"{op}|{o}": n for (op, o), n in total.items()}, indent=1))
    assert sum(total.values()) == 2000
