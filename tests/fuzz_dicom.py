"""Seeded DICOM mutations of the real sample series, for the fuzz test of ingest.

Each mutant is a two-slice series: two neighbouring real slices of ``sample_data/ct`` under a fresh
Study/Series UID, one of them mutated by one operator (both, in the same way, for the transfer
syntax, huge sizes and non-UID series UIDs, so that the series stays whole and reaches the size
check, the pixel decoder and the file naming):

- ``tag_value``: a random value (text, number, bytes, empty, very long) in a random element,
  the geometry and size tags among them;
- ``vr``: an element re-encoded with another VR;
- ``length``: an element's value truncated or extended;
- ``truncate``: the file cut at a random byte;
- ``pixel_length``: the pixel data cut, padded or emptied;
- ``transfer_syntax``: the file meta's transfer syntax set to another one (known, unknown, bogus)
  for both slices, with the pixels as they were;
- ``huge``: Rows, Columns or NumberOfFrames declared huge (up to 65535 and 2³¹ − 1);
- ``uid``: a SeriesInstanceUID that is not a UID (a path with ``..``, separators, 200 characters);
- ``delete``: a required element removed;
- ``bytes``: random bytes flipped in the header.

``make_batch(out, n, seed)`` writes ``n`` mutant series under ``out`` and returns their records:
``(name, operator, series_uid, files)``. The same seed gives the same files.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from corpus import sample_files
from pydicom.dataelem import DataElement
from pydicom.uid import generate_uid

OPERATORS = ("tag_value", "vr", "length", "truncate", "pixel_length", "transfer_syntax", "huge", "uid", "delete", "bytes")
TAGS = ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "SeriesInstanceUID", "StudyInstanceUID",
        "PatientID", "Modality", "InstanceNumber", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
        "RescaleIntercept", "RescaleSlope", "NumberOfFrames", "PhotometricInterpretation", "SliceThickness")
VRS = ("US", "SS", "UL", "SL", "FL", "FD", "DS", "IS", "CS", "LO", "SH", "UI", "OB", "OW", "UN", "SQ", "AT", "DA")
SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.8.1", "1.2.3.4.5.6.7", "not.a.syntax", "")
BAD_UIDS = ("../../../../tmp/escape{k}", "/etc/passwd{k}", "a/b\\c{k}", "..{k}", "1.2..3.{k}", "0" * 200 + "{k}", "1.2.3 4.{k}",
            "ü.1.2.{k}", "\x00x{k}")


@dataclass(frozen=True)
class Mutant:
    name: str
    operator: str
    series_uid: str  # the UID given before mutation (the mutation may change it)
    files: tuple[Path, ...]


def _random_value(rng: random.Random):
    kind = rng.choice(("text", "int", "float", "bytes", "empty", "long", "list", "negative", "nan"))
    return {"text": lambda: "".join(rng.choice("abcXYZ019.-\\ ") for _ in range(rng.randint(1, 20))),
            "int": lambda: rng.randint(0, 2**31 - 1), "float": lambda: rng.uniform(-1e9, 1e9),
            "bytes": lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))), "empty": lambda: "",
            "long": lambda: "9" * rng.randint(65, 5000), "list": lambda: [rng.uniform(-1e3, 1e3) for _ in range(rng.randint(1, 9))],
            "negative": lambda: -rng.randint(1, 70000), "nan": lambda: "NaN\\inf\\-inf"}[kind]()


def _set_raw(ds, keyword: str, vr: str, value) -> None:
    """Put ``value`` in element ``keyword`` with ``vr`` without pydicom's own validation."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if isinstance(value, (int, float)) and vr in ("OB", "OW", "UN"):
        value = str(value).encode()
    if isinstance(value, list) and vr in ("OB", "OW", "UN", "US", "SS", "UL", "SL", "AT"):
        value = bytes(abs(int(v)) % 256 for v in value)
    if isinstance(value, bytes) and vr not in ("OB", "OW", "UN"):
        value = value.decode("latin-1")
    ds[tag] = DataElement(tag, vr, value)


def _save(ds, path: Path) -> bool:
    """Write ``ds``; False when even pydicom refuses to encode the mutation (the mutant is then dropped)."""
    try:
        pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
        ds.save_as(path, enforce_file_format=False)
        return True
    except Exception:  # noqa: BLE001 - an unencodable mutation is not a test case
        path.unlink(missing_ok=True)
        return False


def _mutate_dataset(ds, op: str, rng: random.Random) -> None:
    if op == "tag_value":
        keyword = rng.choice(TAGS)
        vr = pydicom.datadict.dictionary_VR(pydicom.datadict.tag_for_keyword(keyword))
        _set_raw(ds, keyword, vr, _random_value(rng))
    elif op == "vr":
        keyword = rng.choice(TAGS)
        _set_raw(ds, keyword, rng.choice(VRS), _random_value(rng))
    elif op == "huge":
        keyword = rng.choice(("Rows", "Columns", "NumberOfFrames"))
        value = rng.choice((65535, 65534, 40000)) if keyword != "NumberOfFrames" else rng.choice((2**31 - 1, 100000, 65535))
        _set_raw(ds, keyword, "US" if keyword != "NumberOfFrames" else "IS", value)
    elif op == "uid":
        ds.SeriesInstanceUID = rng.choice(BAD_UIDS).format(k=rng.getrandbits(32))  # one series per mutant
    elif op == "delete":
        keyword = rng.choice(TAGS + ("PixelData", "SOPClassUID"))
        if keyword in ds:
            del ds[keyword]
    elif op == "pixel_length":
        data = ds.PixelData
        choice = rng.choice(("cut", "pad", "empty", "odd"))
        ds.PixelData = {"cut": data[: rng.randint(0, len(data) - 1)], "pad": data + bytes(rng.randint(1, 5000)), "empty": b"",
                        "odd": data[:-1]}[choice]


def _mutate_bytes(path: Path, op: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if op == "truncate":
        data = data[: rng.randint(0, len(data) - 1)]
    elif op == "bytes":
        header_end = min(len(data), 4000)
        for _ in range(rng.randint(1, 30)):
            data[rng.randint(132, header_end - 1)] = rng.getrandbits(8)
    elif op == "length":
        pos = rng.randint(132, min(len(data), 3000) - 4)
        data[pos : pos + 4] = rng.getrandbits(32).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _patch_transfer_syntax(path: Path, syntax: str) -> None:
    """Rewrite the file meta's (0002,0010) value in place (group 2 is explicit VR little endian), fixing its group length."""
    data = bytearray(path.read_bytes())
    at = data.find(b"\x02\x00\x10\x00UI", 128, 600)
    if at < 0:
        return
    old_len = int.from_bytes(data[at + 6 : at + 8], "little")
    value = syntax.encode() + (b"\x00" if len(syntax) % 2 else b"")
    data[at + 6 : at + 8 + old_len] = len(value).to_bytes(2, "little") + value
    group = data.find(b"\x02\x00\x00\x00UL\x04\x00", 128, 200)
    if group >= 0:
        n = int.from_bytes(data[group + 8 : group + 12], "little") + len(value) - old_len
        data[group + 8 : group + 12] = n.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def make_batch(out: Path, n: int, seed: int, operators: tuple[str, ...] = OPERATORS) -> list[Mutant]:
    """Write ``n`` mutant series (two slices each) under ``out``; see the module docstring."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every invalid value we write on purpose
        return _make_batch(out, n, seed, operators)


def _make_batch(out: Path, n: int, seed: int, operators: tuple[str, ...]) -> list[Mutant]:
    rng = random.Random(seed)
    slices = sample_files()
    mutants: list[Mutant] = []
    while len(mutants) < n:
        k = len(mutants)
        op = operators[k % len(operators)]
        i = rng.randint(0, len(slices) - 2)
        uid, study = generate_uid(prefix="1.2.826.0.1.3680043.8.498."), generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
        folder = out / f"m{k:05d}_{op}"
        folder.mkdir(parents=True)
        files = []
        target = rng.randint(0, 1)
        both = op in ("huge", "uid")  # the same change on both slices, so the series stays one series and reaches pixel reading
        state = rng.getstate()
        for j, src in enumerate(slices[i : i + 2]):
            ds = pydicom.dcmread(src)
            ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.SOPInstanceUID = uid, study, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = folder / f"{j}.dcm"
            if (j == target or both) and op not in ("truncate", "bytes", "length", "transfer_syntax"):
                if both:
                    rng.setstate(state)  # the same draw for both slices
                try:
                    _mutate_dataset(ds, op, rng)
                except Exception:  # noqa: BLE001 - pydicom refused to hold this value: not a test case
                    break
            if not _save(ds, path):
                break
            if j == target and op in ("truncate", "bytes", "length"):
                _mutate_bytes(path, op, rng)
            files.append(path)
        if op == "transfer_syntax" and len(files) == 2:  # both slices declare the new syntax; the data stay as they were
            syntax = SYNTAXES[rng.randrange(len(SYNTAXES))]
            for f in files:
                _patch_transfer_syntax(f, syntax)
        if len(files) == 2:
            mutants.append(Mutant(folder.name, op, uid, tuple(files)))
        else:
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
    return mutants
