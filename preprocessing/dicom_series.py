"""DICOM discovery, series grouping, validation and reading (pydicom headers, SimpleITK pixels).

Headers are read with ``stop_before_pixels``, only the tags listed in :data:`HEADER_TAGS`, and
large values deferred, so scanning an archive of any size keeps a few hundred bytes per file
(``benchmarks/bench_headers.py``) and never reads a patient's name. Pixels are read only for
series that pass validation, by SimpleITK (GDCM), which also applies Rescale Slope/Intercept,
giving Hounsfield units for CT. A series whose transfer syntax GDCM cannot decode
(:data:`DECODABLE_TRANSFER_SYNTAXES`) is rejected before reading: GDCM's own error for it is
"Unable to determine ImageIO reader".

Slices are ordered by their position along the slice normal (row × column direction cosines),
never by InstanceNumber, which scanners do not always assign in spatial order.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.encaps import parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from pipeline.core.engine import map_items
from pipeline.core.errors import DicomReadError, InvalidSeriesError

IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"
# Transfer syntaxes whose pixel data are stored uncompressed (size is predictable).
_UNCOMPRESSED = {IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE}
# Transfer syntaxes SimpleITK's GDCM decodes; tests/preprocessing/test_dicom_series.py reads a real file of each
# one that pydicom ships. Anything else (JPEG XL, video, Deflated Image Frame Compression, private
# syntaxes) has no decoder here.
DECODABLE_TRANSFER_SYNTAXES = frozenset({
    IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE,
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",  # JPEG
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",  # JPEG 2000, HTJ2K lossless
})
# Names of transfer syntaxes newer than pydicom's dictionary.
_TS_NAMES = {"1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression", "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
             "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression", "1.2.840.10008.1.2.4.112": "JPEG XL"}
# The only tags read from a header: nothing else (no names, dates) is parsed into memory.
HEADER_TAGS = ("SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Modality", "ImagePositionPatient", "ImageOrientationPatient",
               "PixelSpacing", "Rows", "Columns", "InstanceNumber", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames", "SOPClassUID")
_SEQ_END = b"\xfe\xff\xdd\xe0"  # (FFFE,E0DD) little endian


# Files that download folders carry beside the slices and that are plainly not images (annotations,
# tables, notes): by name ending, when the file has no DICOM preamble.
NOT_IMAGE_SUFFIXES = {".xml": "an XML", ".csv": "a CSV", ".tsv": "a TSV", ".txt": "a text", ".json": "a JSON", ".md": "a text",
                      ".html": "an HTML", ".htm": "an HTML", ".pdf": "a PDF", ".log": "a text", ".yaml": "a YAML", ".yml": "a YAML",
                      ".ini": "a text", ".rtf": "an RTF", ".xls": "a spreadsheet", ".xlsx": "a spreadsheet", ".doc": "a document",
                      ".docx": "a document", ".icc": "an ICC colour profile", ".dump": "a text"}
# Name endings that say "DICOM": such a file is expected to be an image, so a broken one stays an error.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})


class NotAnImage(Exception):
    """A file that is plainly not an image (annotations, a table, text, a DICOMDIR, a non-image DICOM
    object): ingest lists it in ``ignored.csv`` with the reason and one summary note, not as an error."""


def transfer_syntax_name(uid: str) -> str:
    name = _TS_NAMES.get(uid) or UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


@dataclass(frozen=True)
class SliceHeader:
    """The header fields of one slice needed to group, order and validate a series."""

    path: Path
    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    position: tuple[float, float, float]  # ImagePositionPatient, LPS mm
    orientation: tuple[float, ...]  # ImageOrientationPatient (row cosines, column cosines)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    rows: int
    columns: int
    instance_number: int | None
    transfer_syntax: str = EXPLICIT_LE
    frames: int = 1  # NumberOfFrames (1 when absent)


@dataclass
class SeriesInfo:
    """A validated series: its slices in spatial order plus summary geometry."""

    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    slices: list[SliceHeader]
    slice_spacing_mm: float
    pixel_spacing_mm: tuple[float, float]
    rows: int
    columns: int
    extra: dict = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return [str(s.path) for s in self.slices]


def plain_non_image(path: Path, head: bytes) -> str:
    """What kind of plainly non-image file ``path`` is ("an XML file", ...), or '' when it may be an image.

    ``head`` is the file's first bytes (≥ 132 of them where the file has them). A file with the DICM
    preamble is judged by its SOP class later (:func:`non_image_sop_class`); a file named like DICOM
    (``.dcm`` ...) is expected to be one, so it is never called a non-image here.
    """
    if path.name.upper() == "DICOMDIR":
        return "a DICOMDIR index"
    if head[128:132] == b"DICM":
        return ""
    suffix = path.suffix.lower()
    if suffix in NOT_IMAGE_SUFFIXES:
        return f"{NOT_IMAGE_SUFFIXES[suffix]} file"
    if suffix in DICOM_SUFFIXES or not head or b"\0" in head:
        return ""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a multi-byte character cut at the end of the head: binary
            return ""
        text = head[:exc.start].decode("utf-8")
    text = text.lstrip("\ufeff \t\r\n")
    if text.startswith("<"):
        return "an XML file"
    if text[:1] in ("{", "["):
        return "a JSON file"
    return "a text file" if all(c.isprintable() or c in "\t\r\n" for c in text) else ""


def _archive_hint(path: Path) -> str:
    """'; a gzip archive: ...' when ``path`` is a compressed archive a user has to unpack first, else ''."""
    with open(path, "rb") as fp:
        magic = fp.read(4)
    if magic[:2] == b"\x1f\x8b":
        return "; a gzip archive: decompress it first"
    if magic == b"PK\x03\x04":
        return "; a ZIP archive: extract it first"
    return ""


def non_image_sop_class(ds) -> str:
    """What ``ds`` is ("a DICOM RT Plan Storage object") when its SOP class is a known non-image
    object (SR, RT Plan, a presentation state, a DICOMDIR, ...), else ''. Image storage classes,
    and unknown or missing ones, give '' (the file is then checked as a slice)."""
    meta = getattr(ds, "file_meta", None)
    uid = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else "") or "")
    if not uid:
        return ""
    name = UID(uid).name
    if uid == "1.2.840.10008.1.3.10":  # Media Storage Directory Storage
        return "a DICOMDIR index"
    return "" if name == uid or "Image Storage" in name else f"a DICOM {name} object"


def read_header(path: Path) -> SliceHeader:
    """Read one file's header (no pixels). Raises :class:`DicomReadError` with the reason, or
    :class:`NotAnImage` for a file that is plainly not an image."""
    try:
        size = path.stat().st_size
    except OSError as exc:  # a dangling link, a file removed during the scan, no permission
        raise DicomReadError(f"{path}: cannot be read ({exc.strerror})") from None
    if size == 0:
        raise DicomReadError(f"{path}: empty file (0 bytes)")
    try:
        with open(path, "rb") as fp:
            kind = plain_non_image(path, fp.read(512))
            if kind:
                raise NotAnImage(f"{path}: {kind}, not an image")
            fp.seek(0)
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=list(HEADER_TAGS), defer_size=1024)
            pixel_offset = fp.tell()  # pydicom rewinds to the start of the Pixel Data element
            sop = non_image_sop_class(ds)
            if sop:
                raise NotAnImage(f"{path}: {sop}, not an image")
            missing = [k for k in ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
                       if k not in ds]
            if missing:
                raise DicomReadError(f"{path}: not a cross-sectional image slice (missing {', '.join(missing)})")
            tsyntax = str(getattr(ds.file_meta, "TransferSyntaxUID", IMPLICIT_LE))
            if tsyntax != DEFLATED_LE:  # a deflated data set has no file offsets to check
                _check_pixel_data(path, fp, ds, tsyntax, pixel_offset, size)
    except (DicomReadError, NotAnImage):
        raise
    except InvalidDicomError:
        raise DicomReadError(f"{path}: not a DICOM file (no DICM preamble{_archive_hint(path)})") from None
    except Exception as exc:  # pydicom raises many types on damaged headers
        raise DicomReadError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})") from None
    try:
        header = SliceHeader(
            path=path,
            series_uid=str(ds.SeriesInstanceUID),
            study_uid=str(ds.get("StudyInstanceUID", "")),
            patient_id=str(ds.get("PatientID", "")) or "unknown",
            modality=str(ds.get("Modality", "")),
            position=tuple(float(v) for v in ds.ImagePositionPatient),
            orientation=tuple(float(v) for v in ds.ImageOrientationPatient),
            pixel_spacing=tuple(float(v) for v in ds.PixelSpacing),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
            transfer_syntax=tsyntax,
            frames=int(ds.get("NumberOfFrames", 1) or 1),
        )
    except Exception as exc:  # noqa: BLE001 - pydicom converts values lazily and raises many types on damaged ones
        raise DicomReadError(f"{path}: malformed header value ({type(exc).__name__}: {str(exc)[:200]})") from None
    problem = _geometry_problem(header)
    if problem:
        raise DicomReadError(f"{path}: malformed geometry tags ({problem})")
    return header


def _geometry_problem(h: SliceHeader) -> str:
    """Why a header's geometry cannot describe a slice ('' when it can): counts, finiteness, unit orthogonal cosines."""
    if len(h.position) != 3 or len(h.orientation) != 6 or len(h.pixel_spacing) != 2:
        return (f"ImagePositionPatient/ImageOrientationPatient/PixelSpacing need 3/6/2 values, "
                f"got {len(h.position)}/{len(h.orientation)}/{len(h.pixel_spacing)}")
    values = np.array([*h.position, *h.orientation, *h.pixel_spacing], float)
    if not np.all(np.isfinite(values)):
        return "non-finite position, orientation or spacing"
    if min(h.pixel_spacing) <= 0:
        return f"PixelSpacing {list(h.pixel_spacing)} is not positive"
    if h.rows < 1 or h.columns < 1 or h.frames < 1:
        return f"Rows {h.rows}, Columns {h.columns}, NumberOfFrames {h.frames} must be ≥ 1"
    row, col = np.asarray(h.orientation[:3]), np.asarray(h.orientation[3:])
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(row @ col) > 1e-2:
        return f"ImageOrientationPatient {list(h.orientation)} is not two orthogonal unit vectors"
    return ""


def _check_pixel_data(path: Path, fp: BinaryIO, ds, tsyntax: str, pixel_offset: int, size: int) -> None:
    """Check, without reading them, that the pixel data are all in the file (not truncated).

    Native pixel data must be Rows × Columns × ... bytes long; encapsulated (compressed) data must
    end with the sequence delimiter after its last fragment (pydicom locates the fragments).
    """
    if pixel_offset >= size:
        raise DicomReadError(f"{path}: no pixel data (file ends after the header)")
    # element header: tag(4) + length(4) implicit VR; tag(4) + VR(2) + reserved(2) + length(4) explicit VR
    element_header = 8 if tsyntax == IMPLICIT_LE else 12
    if tsyntax in _UNCOMPRESSED:
        n_pixel = (int(ds.Rows) * int(ds.Columns) * int(ds.get("BitsAllocated", 16)) // 8 * int(ds.get("SamplesPerPixel", 1))
                   * int(ds.get("NumberOfFrames", 1) or 1))
        expected = pixel_offset + element_header + n_pixel
        if size < expected:
            raise DicomReadError(f"{path}: truncated file ({size} bytes; its header and pixel data need {expected})")
        return
    fp.seek(pixel_offset + element_header)
    try:
        n, offsets = parse_fragments(fp)  # the basic offset table is item 0
    except ValueError as exc:
        raise DicomReadError(f"{path}: truncated or damaged compressed pixel data ({exc})") from None
    if n < 2:
        raise DicomReadError(f"{path}: no pixel data (no compressed frame after the offset table)")
    fp.seek(offsets[-1] + 4)
    end = offsets[-1] + 8 + int.from_bytes(fp.read(4), "little")
    fp.seek(end)
    if end > size or fp.read(4) != _SEQ_END:
        raise DicomReadError(f"{path}: truncated file ({size} bytes; its compressed pixel data end at {end} bytes without the closing delimiter)")


HEADER_CHUNK = 64  # files per task when headers are read by several workers (≈ 0.05-0.1 s of work each)


@dataclass(frozen=True)
class FileRead:
    """What reading one file's header gave: a slice header, or an error or ignore reason; and the
    library warnings raised while reading it (once each)."""

    header: SliceHeader | None = None
    error: str = ""
    ignored: str = ""
    warnings: tuple[str, ...] = ()


def read_file(path: Path) -> FileRead:
    """:func:`read_header` with its outcome as a value and the library warnings caught (never raises)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            read = FileRead(header=read_header(path))
        except DicomReadError as exc:
            read = FileRead(error=str(exc))
        except NotAnImage as exc:
            read = FileRead(ignored=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug on one hostile file must not stop the others
            read = FileRead(error=f"{path}: unexpected {type(exc).__name__} while reading the header: {str(exc)[:200]}")
    said = tuple(dict.fromkeys(f"{w.category.__name__}: {str(w.message).strip()[:300]}" for w in caught))
    return FileRead(read.header, read.error, read.ignored, said) if said else read


def _read_header_chunk(job: tuple[int, list[Path]]) -> tuple[int, list[FileRead]]:
    """``(chunk number, reads)`` of one chunk of files, in order."""
    index, paths = job
    return index, [read_file(path) for path in paths]


@dataclass
class Discovery:
    """The files under a root, sorted out: readable slices by series, and per file what was wrong."""

    series: dict[str, list[SliceHeader]] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, message): should be an image, cannot be read
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): plainly not an image
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (file, library warning), once each


def discover(root: Path, workers: int = 1, engine: str = "local") -> Discovery:
    """Walk ``root`` recursively and group readable slices by SeriesInstanceUID.

    Unreadable files become ``errors``, files that are plainly not images (annotations, tables,
    text, DICOMDIR, non-image DICOM objects) ``ignored``; library warnings are kept with the file
    they came from. With ``workers > 1`` the headers are read in chunks of :data:`HEADER_CHUNK`
    files by the engine's workers (on a cluster the header walk of a large archive is otherwise
    the serial bottleneck, docs/SCALING.md); the result is the same, in the same order. Hidden
    files are skipped silently.
    """
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths += [Path(dirpath) / name for name in sorted(filenames) if not name.startswith(".")]
    chunks = list(enumerate(paths[i:i + HEADER_CHUNK] for i in range(0, len(paths), HEADER_CHUNK)))
    if workers > 1 and len(chunks) > 1:
        read: dict[int, list[FileRead]] = {}
        for key, ok, res in map_items(_read_header_chunk, chunks, workers, desc="headers", engine=engine, key=lambda c: str(c[0])):
            # an unexpected failure of the task: read that chunk here, so each file gets its own message
            k, reads = res if ok else _read_header_chunk(chunks[int(key)])
            read[k] = reads
    else:
        read = dict(map(_read_header_chunk, chunks))
    found = Discovery()
    for i, chunk in chunks:
        for path, got in zip(chunk, read[i]):
            found.warnings += [(str(path), w) for w in got.warnings]
            if got.header is not None:
                found.series.setdefault(got.header.series_uid, []).append(got.header)
            elif got.ignored:
                found.ignored.append((str(path), got.ignored))
            else:
                found.errors.append((str(path), got.error))
    return found


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """Unit normal of the slice plane (row cosines × column cosines), LPS."""
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    n = np.cross(row, col)
    return n / np.linalg.norm(n)


def validate_series(slices: list[SliceHeader], min_slices: int = 8, spacing_tolerance: float = 0.1) -> SeriesInfo:
    """Order slices along the normal and check that they form one regular volume.

    Checks: a decodable transfer syntax; a single orientation and in-plane geometry; at least
    ``min_slices`` slices; no duplicate positions; positions along the normal (no gantry tilt);
    uniform gaps within ``spacing_tolerance`` (relative), with a gap of ~k·spacing reported as
    k−1 missing slices. Raises :class:`InvalidSeriesError` naming the series and the problem.
    """
    tag = f"series {slices[0].series_uid}"
    _check_uniform(slices, tag, min_slices)
    normal = slice_normal(slices[0].orientation)
    pos = np.array([s.position for s in slices])
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    pos, along = pos[order], along[order]
    spacing = _slice_spacing(slices, pos, along, normal, tag, spacing_tolerance)
    first = slices[0]
    return SeriesInfo(
        series_uid=first.series_uid,
        study_uid=first.study_uid,
        patient_id=first.patient_id,
        modality=first.modality,
        slices=slices,
        slice_spacing_mm=spacing,
        pixel_spacing_mm=first.pixel_spacing,
        rows=first.rows,
        columns=first.columns,
    )


def _check_uniform(slices: list[SliceHeader], tag: str, min_slices: int) -> None:
    """Every slice decodable, enough of them, one orientation, one size, one pixel spacing."""
    undecodable = sorted({s.transfer_syntax for s in slices} - DECODABLE_TRANSFER_SYNTAXES)
    if undecodable:
        n = sum(s.transfer_syntax in undecodable for s in slices)
        raise InvalidSeriesError(f"{tag}: unsupported transfer syntax {', '.join(map(transfer_syntax_name, undecodable))} "
                                 f"in {n} of {len(slices)} file(s): "
                                 "no decoder for it is installed (SimpleITK/GDCM); convert the files to an uncompressed transfer syntax first")
    if len(slices) < min_slices:
        raise InvalidSeriesError(f"{tag}: only {len(slices)} slice(s), need at least {min_slices} (ingest.min_slices)")
    o0 = np.asarray(slices[0].orientation)
    if any(not np.allclose(s.orientation, o0, atol=1e-4) for s in slices):
        n = len({tuple(np.round(s.orientation, 4)) for s in slices})
        raise InvalidSeriesError(f"{tag}: {n} different slice orientations in one series; expected one")
    shapes = {(s.rows, s.columns) for s in slices}
    if len(shapes) > 1:
        raise InvalidSeriesError(f"{tag}: slices have different sizes {sorted(shapes)}")
    spacings = {tuple(np.round(s.pixel_spacing, 5)) for s in slices}
    if len(spacings) > 1:
        raise InvalidSeriesError(f"{tag}: slices have different PixelSpacing {sorted(spacings)}")


def _slice_spacing(slices: list[SliceHeader], pos: np.ndarray, along: np.ndarray, normal: np.ndarray, tag: str, tolerance: float) -> float:
    """The median gap of slices sorted along the normal, after checking duplicates, tilt and missing slices."""
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        i = int(np.argmax(gaps < 1e-3))
        raise InvalidSeriesError(f"{tag}: duplicate slice position {along[i]:.2f} mm along the normal "
                                 f"({slices[i].path.name}, {slices[i + 1].path.name})")
    disp = pos[-1] - pos[0]
    lateral = np.linalg.norm(disp - (disp @ normal) * normal)
    if lateral > 1e-3 * max(np.linalg.norm(disp), 1.0) + 0.01:
        angle = np.degrees(np.arctan2(lateral, abs(disp @ normal)))
        raise InvalidSeriesError(f"{tag}: slice positions are sheared {angle:.1f}° from the slice normal (gantry tilt); "
                                 "not supported, reconstruct without tilt")
    spacing = float(np.median(gaps))
    bad = np.abs(gaps - spacing) > tolerance * spacing
    if np.any(bad):
        i = int(np.argmax(bad))
        ratio = gaps[i] / spacing
        if round(ratio) >= 2 and abs(ratio - round(ratio)) < tolerance:
            n_missing = int(round(ratio)) - 1
            raise InvalidSeriesError(f"{tag}: {n_missing} missing slice(s) between {along[i]:.2f} and {along[i + 1]:.2f} mm "
                                     f"(gap {gaps[i]:.2f} mm, spacing {spacing:.2f} mm)")
        raise InvalidSeriesError(f"{tag}: non-uniform slice spacing: gap {gaps[i]:.2f} mm at {along[i]:.2f} mm vs median {spacing:.2f} mm")
    return spacing


def extent_box(info: SeriesInfo) -> tuple[np.ndarray, np.ndarray]:
    """The series' axis-aligned bounding box in LPS mm (lower and upper corners, voxel centres)."""
    first = np.asarray(info.slices[0].position, float)
    row, col = np.asarray(info.slices[0].orientation[:3]), np.asarray(info.slices[0].orientation[3:])
    edges = [row * (info.columns - 1) * info.pixel_spacing_mm[1], col * (info.rows - 1) * info.pixel_spacing_mm[0],
             np.asarray(info.slices[-1].position, float) - first]
    corners = np.array([first + a * edges[0] + b * edges[1] + c * edges[2] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    return corners.min(axis=0), corners.max(axis=0)


def overlap_notes(infos: list[SeriesInfo], min_iou: float = 0.9) -> list[str]:
    """One note per pair of series of one patient and study whose volumes coincide (IoU of their
    bounding boxes ≥ ``min_iou``): e.g. two reconstructions of one scan, both ingested."""
    notes = []
    by_study: dict[tuple[str, str], list[SeriesInfo]] = {}
    for info in infos:
        by_study.setdefault((info.patient_id, info.study_uid), []).append(info)
    for (patient, study), group in sorted(by_study.items()):
        boxes = [extent_box(i) for i in group]
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                lo, hi = np.maximum(boxes[a][0], boxes[b][0]), np.minimum(boxes[a][1], boxes[b][1])
                inter = float(np.prod(np.clip(hi - lo, 0, None)))
                union = float(np.prod(boxes[a][1] - boxes[a][0]) + np.prod(boxes[b][1] - boxes[b][0])) - inter
                if union > 0 and inter / union >= min_iou:
                    notes.append(f"series {group[a].series_uid} and {group[b].series_uid} of patient {patient} (study {study}) "
                                 f"cover the same volume ({inter / union:.0%} overlap); both were ingested "
                                 "(e.g. two reconstructions of one scan: keep the one you want, or both count as that patient's scans)")
    return notes


def check_size(info: SeriesInfo, spacing_mm: float, max_voxels: int) -> None:
    """Reject a series whose declared pixels, or whose grid at ``spacing_mm``, exceed ``max_voxels``.

    Uses the headers only, so a file declaring 65535 × 65535 pixels (or a PixelSpacing of 10⁶ mm)
    is refused before SimpleITK allocates anything.
    """
    declared = info.rows * info.columns * sum(max(1, s.frames) for s in info.slices)
    extent = np.array([info.columns * info.pixel_spacing_mm[1], info.rows * info.pixel_spacing_mm[0], len(info.slices) * info.slice_spacing_mm])
    grid = int(np.prod(np.ceil(extent / spacing_mm)))
    if declared > max_voxels or grid > max_voxels:
        raise InvalidSeriesError(f"series {info.series_uid}: declared size {info.columns}×{info.rows}×{len(info.slices)} "
                                 f"({declared:,} voxels; {grid:,} at {spacing_mm:g} mm) exceeds ingest.max_voxels {max_voxels:,}; not read")


def read_volume(info: SeriesInfo) -> sitk.Image:
    """Read a validated series as a float32 image in HU with exact DICOM geometry (LPS)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(info.files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise InvalidSeriesError(f"series {info.series_uid}: pixel data could not be decoded ({first_line})") from None
    image = sitk.Cast(image, sitk.sitkFloat32)
    # ImageSeriesReader takes the slice spacing from the first two files; use the validated median.
    spacing = list(image.GetSpacing())
    spacing[2] = info.slice_spacing_mm
    image.SetSpacing(spacing)
    return image
