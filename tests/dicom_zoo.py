"""A real-world DICOM zoo: every file that ships with pydicom and pydicom-data, in one folder tree.

``build_zoo(root)`` copies pydicom's ``test_files`` and ``charset_files`` and pydicom-data's
``data`` (≈ 260 files: CT, MR, CR, US, secondary captures, RT objects, SR, SEG, DICOMDIRs,
waveforms, damaged files, README/JSON/dump text) under ``root/<source>/``, plus the bundled
LIDC-IDRI-0063 crop so that one real CT series is ingested. :func:`outcomes` reads what
``pipeline ingest`` made of each file from its ``series.csv``, ``errors.csv`` and ``ignored.csv``.

``tests/data/dicom_zoo_outcomes.csv`` is the checked-in table of expected outcomes (one row per
file). After a deliberate change of behaviour, regenerate it and review the diff:
``python tests/dicom_zoo.py /tmp/zoo --write``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pydicom
import pydicom.data

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "tests" / "data" / "dicom_zoo_outcomes.csv"
SAMPLE_SERIES = ROOT / "sample_data" / "ct" / "LIDC-IDRI-0063"


def sources() -> dict[str, Path]:
    """The zoo's source folders by name (pydicom-data's only where it is installed)."""
    base = Path(pydicom.data.__file__).parent
    found = {"pydicom": base / "test_files", "pydicom-charsets": base / "charset_files", "sample-LIDC-IDRI-0063": SAMPLE_SERIES}
    try:
        import data_store  # the pydicom-data package

        found["pydicom-data"] = Path(data_store.__file__).parent / "data"
    except ImportError:
        pass
    return found


def build_zoo(root: Path) -> list[str]:
    """Copy every shipped file under ``root/<source>/``; returns their paths relative to ``root``."""
    copied = []
    for name, base in sources().items():
        for f in sorted(base.rglob("*")):
            if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts:
                dst = root / name / f.relative_to(base)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dst)
                copied.append(str(dst.relative_to(root)))
    return copied


def _series_uid(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pipeline reports them; here they would only be noise
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SeriesInstanceUID"])
            return str(ds.get("SeriesInstanceUID", ""))
        except Exception:  # noqa: BLE001 - damaged files: they must have a file-level outcome anyway
            return ""


def reason(message: str, path: str) -> str:
    """The stable part of a message: without the file's path and the run folder, up to its first
    parenthesis, digits kept (e.g. 'only 4 slice(s), need at least 8')."""
    text = message.split(f"{path}: ", 1)[-1]
    text = re.sub(r"^series \S+: ", "", text)
    return text.split(" (")[0].strip()


def outcomes(root: Path, run: Path, files: list[str]) -> pd.DataFrame:
    """One row per file: ``outcome`` (ingested, ignored, file error, series error, or missing) and its ``reason``."""
    errors = pd.read_csv(run / "errors.csv", dtype=str, keep_default_na=False)
    ignored = pd.read_csv(run / "ignored.csv", dtype=str, keep_default_na=False)
    ingested = set(pd.read_csv(run / "series.csv", dtype=str)["series_uid"]) if (run / "series.csv").exists() else set()
    by_item = {**{i: ("file error", m) for i, m in zip(errors["item"], errors["error"])},
               **{i: ("ignored", m) for i, m in zip(ignored["item"], ignored["reason"])}}
    rows = []
    for rel in files:
        path = str(root / rel)
        if path in by_item:
            outcome, msg = by_item[path]
            rows.append((rel, outcome, reason(msg, path)))
            continue
        uid = _series_uid(root / rel)
        series_error = errors.loc[errors["item"] == f"series {uid}", "error"]
        if uid in ingested:
            rows.append((rel, "ingested", ""))
        elif len(series_error):
            rows.append((rel, "series error", reason(series_error.iloc[0], path)))
        else:
            rows.append((rel, "missing", ""))
    return pd.DataFrame(rows, columns=["file", "outcome", "reason"])


def run_ingest(root: Path, run: Path) -> subprocess.CompletedProcess:
    """``pipeline ingest`` on the zoo with the main config, as a user runs it."""
    cfg = run.parent / "zoo.yaml"
    text = (ROOT / "configs" / "ct_nodules_vae.yaml").read_text().replace("../sample_data/ct/LIDC-IDRI-0063", str(root))
    cfg.write_text(text.replace("../sample_data/ct/nodules.csv", str(ROOT / "sample_data" / "ct" / "nodules.csv")))
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", str(cfg), "--out", str(run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


if __name__ == "__main__":
    # python tests/dicom_zoo.py OUT [--write]: build the zoo, ingest it, print (and with --write save) the outcomes
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "zoo").resolve()
    shutil.rmtree(out, ignore_errors=True)
    zoo_files = build_zoo(out / "in")
    proc = run_ingest(out / "in", out / "run")
    print(proc.stderr)
    table = outcomes(out / "in", out / "run", zoo_files)
    print(table["outcome"].value_counts().to_string())
    if "--write" in sys.argv:
        table.to_csv(EXPECTED, index=False)
        print(f"wrote {EXPECTED}")
