"""The labels of an image folder (``ingest.format: images``): one row per image, from a labels CSV
(``ingest.images.labels_from: csv``, the default) or from the folder layout (``folders``).

**Labels CSV.** Columns (names from ``ingest.images``): the image (a path under ``ingest.input``, or
an ID that ``extensions`` complete, as in ISIC 2018's ``image`` column), optionally the patient (or
lesion), and the class, either in one column (``label_column``) or as one-hot columns
(``class_columns``, ISIC 2018 Task 3: MEL, NV, BCC, AKIEC, BKL, DF, VASC). Optional: a predefined
split column and a per-image pixel spacing column. Each bad row (duplicate ID, missing file, no or
several one-hot classes, bad split or spacing value) becomes one error naming the CSV line; the
other rows go on.

**Folder layout** (torchvision ImageFolder, the Kermany chest X-ray download): every file under
``ingest.input`` whose name ends in one of ``extensions`` (any case; hidden files and folders
skipped) is one image, in path order, laid out ``<input>/[<split>/]<class>/<file>``. The class is
the name of the file's folder; a top folder named ``train``, ``val``/``validation`` or ``test``
(any case) is the image's predefined split (``split.method: predefined``). The sample ID is the
path under ``ingest.input`` (``test/NORMAL/IM-0001-0001.jpeg``). A file with no class folder, one
nested deeper, one beside split folders but outside them, and one in a folder not listed in
``folder_classes`` are each one error naming the file; the other files go on.

Classes are compared as text, case-sensitively (the folder ``NORMAL`` is not the class
``normal``), numbers canonically (``0``, ``0.0`` and YAML ``0`` are one class); an image of a class
neither normal nor anomalous is left out and counted. The patient is ``patient_column``, else what
``patient_regex`` finds in the file name (its first group, or the whole match; a name it does not
match is an error naming the file and the pattern), else the image itself.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import StageError
from pipeline.core.inputs import INPUTS
from pipeline.core.schema import Config

SPLITS = ("train", "val", "test")
SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}  # folder name (lower case) → split
LAYOUT = "<input>/[<split>/]<class>/<file> (split: train, val/validation or test)"
COLUMNS = ["sample_id", "file", "patient_id", "class", "label", "source_split", "source", "spacing_csv"]


def canonical_class(value) -> str:
    """A class value as text; numbers canonically (1, 1.0 and '1' → '1')."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else repr(number)


def labels_path(cfg: Config) -> Path:
    """The configured labels CSV, or ``labels.csv`` inside the image folder (the external input ``ingest.images.labels``)."""
    return INPUTS["ingest.images.labels"].path(cfg)


def leaves_folder(name: str) -> bool:
    """True when the CSV's image name would point outside the image folder (absolute, or ``..`` above it).

    Checked on the text, not on the resolved path, so a user's own symlinks inside the folder still work.
    """
    norm = os.path.normpath(name)
    return os.path.isabs(name) or norm == ".." or norm.startswith(".." + os.sep) or "\0" in name


def resolve_image(root: Path, name: str, extensions: list[str]) -> Path | None:
    """``root/name`` if it is a file, else the first ``root/name<ext>`` that is one (``name`` must stay inside ``root``)."""
    if leaves_folder(name):
        return None
    for cand in [root / name] + [root / f"{name}{ext}" for ext in extensions]:
        if cand.is_file():
            return cand
    return None


def read_labels(cfg: Config) -> tuple[pd.DataFrame, list[tuple[str, str]], dict[str, int]]:
    """Rows with a usable image and label → ``(table, errors, counts)``.

    ``table`` columns: sample_id, file (resolved path), patient_id, class, label (0 normal,
    1 anomaly), source_split, source, spacing_csv (mm or NaN), then the ``keep`` columns.
    Rows whose class is neither normal nor anomalous are left out (counted, not errors). With
    ``labels_from: folders`` the rows are the image files under ``ingest.input`` (:func:`_read_folders`).
    """
    ic = cfg.ingest.images
    if ic.labels_from == "folders":
        return _read_folders(cfg)
    path, table = _read_table(cfg)
    line = {i: i + 2 for i in table.index}  # CSV line of each row (line 1 is the header)
    where = lambda i: f"{path.name} line {line[i]}"  # noqa: E731
    errors: list[tuple[str, str]] = []
    ids = table[ic.id_column].str.strip()
    bad = _bad_ids(path, ids, line, where, ic.id_column, errors)
    classes = _classes(table, cfg, where, errors, bad)
    label = _labels(classes, ic)
    rows, left_out = [], 0
    for i in table.index:
        if i in bad:
            continue
        if label[i] < 0:
            left_out += 1
            continue
        row = _row(table, i, ids[i], cfg, where(i), errors)
        if row is not None:
            rows.append({**row, "class": classes[i], "label": int(label[i])})
    out = pd.DataFrame(rows, columns=[*COLUMNS, *ic.keep])
    return out, errors, {"rows": int(len(table)), "left_out_by_label": left_out}


def _read_table(cfg: Config) -> tuple[Path, pd.DataFrame]:
    """The labels CSV as text, after checking the image folder, the file and its columns."""
    path, root = labels_path(cfg), Path(cfg.ingest.input)
    if not root.is_dir():
        raise StageError(f"ingest.input: image folder {root} does not exist")
    if not path.is_file():
        raise StageError(f"ingest.images.labels: labels CSV {path} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise StageError(f"{path}: cannot read the labels CSV ({exc})") from None
    _check_columns(path, table, cfg)
    return path, table


def _bad_ids(path: Path, ids: pd.Series, line: dict, where, id_column: str, errors: list) -> set:
    """Rows with an empty or a duplicated image ID (each reported once); all are left out."""
    bad = set()
    for i in ids.index[ids == ""]:
        errors.append((f"labels line {line[i]}", f"{where(i)}: empty {id_column!r}; row left out"))
        bad.add(i)
    dup = ids.duplicated(keep=False) & (ids != "")
    for name, rows in ids[dup].groupby(ids[dup]).groups.items():
        lines = ", ".join(str(line[i]) for i in rows)
        errors.append((f"image {name}", f"{path.name}: image {name!r} appears on lines {lines}; IDs must be unique, all its rows left out"))
        bad.update(rows)
    return bad


def _labels(classes: pd.Series, ic) -> pd.Series:
    """0 for the normal classes, 1 for the anomalous ones (default: every other class), −1 for the rest."""
    normal = {canonical_class(v) for v in ic.normal_classes}
    anomalous = {canonical_class(v) for v in ic.anomaly_classes} if ic.anomaly_classes is not None else None
    label = pd.Series(-1, index=classes.index)
    label[classes.isin(normal)] = 0
    label[(~classes.isin(normal)) & (classes.isin(anomalous) if anomalous is not None else classes.ne(""))] = 1
    return label


def _row(table: pd.DataFrame, i, image_id: str, cfg: Config, where: str, errors: list) -> dict | None:
    """One row's file, patient, split and spacing, or None (with its error) when a value is unusable."""
    ic, root = cfg.ingest.images, Path(cfg.ingest.input)
    item = f"image {image_id}"
    if leaves_folder(image_id):
        errors.append((item, f"{where}: image name {image_id!r} points outside the image folder {root}; row left out"))
        return None
    file = resolve_image(root, image_id, ic.extensions)
    if file is None:
        tried = ", ".join([image_id] + [f"{image_id}{e}" for e in ic.extensions])
        errors.append((item, f"{where}: image {image_id!r} not found under {root} (tried {tried})"))
        return None
    split = table.at[i, ic.split_column].strip().lower() if ic.split_column else ""
    if ic.split_column and split not in SPLITS:
        errors.append((item, f"{where}: split {split!r} in column {ic.split_column!r} is not one of {', '.join(SPLITS)}"))
        return None
    spacing = np.nan
    if ic.spacing_column:
        try:
            spacing = float(table.at[i, ic.spacing_column])
        except ValueError:
            spacing = np.nan
        if not (np.isfinite(spacing) and spacing > 0):
            errors.append((item, f"{where}: pixel spacing {table.at[i, ic.spacing_column]!r} in column {ic.spacing_column!r} "
                                 "is not a positive number (mm)"))
            return None
    patient = table.at[i, ic.patient_column].strip() if ic.patient_column else ""
    if ic.patient_regex and not ic.patient_column:
        patient = patient_from_name(file.name, ic.patient_regex)
        if patient is None:
            errors.append((item, f"{where}: {_no_patient(file.name, ic.patient_regex)}; row left out"))
            return None
    return {"sample_id": image_id, "file": file, "patient_id": patient or image_id, "source_split": split, "source": "",
            "spacing_csv": spacing, **{k: table.at[i, k] for k in ic.keep}}


def _check_columns(path: Path, table: pd.DataFrame, cfg: Config) -> None:
    ic = cfg.ingest.images
    wanted = {"id_column": ic.id_column, "patient_column": ic.patient_column, "label_column": ic.label_column,
              "split_column": ic.split_column, "spacing_column": ic.spacing_column}
    problems = [f"ingest.images.{key}: no column {col!r}{_near(col, table.columns)}" for key, col in wanted.items()
                if col and col not in table.columns]
    problems += [f"ingest.images.class_columns: no column {col!r}{_near(col, table.columns)}" for col in ic.class_columns if col not in table.columns]
    problems += [f"ingest.images.keep: no column {col!r}{_near(col, table.columns)}" for col in ic.keep if col not in table.columns]
    if problems:
        raise StageError(f"{path}: " + "; ".join(problems) + f" (columns: {', '.join(table.columns)})")


def _near(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _classes(table: pd.DataFrame, cfg: Config, where, errors: list, bad: set) -> pd.Series:
    """Class per row: the label column, or the single one-hot column holding 1 ('' when unusable)."""
    ic = cfg.ingest.images
    if not ic.class_columns:
        return table[ic.label_column].map(canonical_class)
    onehot = table[list(ic.class_columns)].apply(pd.to_numeric, errors="coerce")
    out = pd.Series("", index=table.index, dtype=object)
    for i, row in onehot.iterrows():
        if i in bad:
            continue
        hot = [c for c, v in row.items() if v == 1]
        if len(hot) == 1 and row.drop(hot[0]).fillna(-1).eq(0).all():
            out[i] = hot[0]
            continue
        name = table.at[i, ic.id_column]
        errors.append((f"image {name}", f"{where(i)}: one-hot columns {', '.join(ic.class_columns)} must hold exactly one 1 and 0 elsewhere; "
                                        f"got {', '.join(f'{c}={table.at[i, c]!r}' for c in ic.class_columns)}"))
        bad.add(i)
    return out


def patient_from_name(name: str, pattern: str) -> str | None:
    """The patient ID that ``pattern`` finds in a file name (``re.search``): its first group, or the whole
    match when it has none; None when it does not match or finds an empty ID."""
    m = re.search(pattern, name)
    if m is None:
        return None
    return (m.group(1) if m.re.groups else m.group(0)) or None


def _no_patient(name: str, pattern: str) -> str:
    return f"file name {name!r} does not match ingest.images.patient_regex '{pattern}' (or finds an empty patient ID)"


# ------------------------------------------------------------------------------------ folder layout


def image_files(root: Path, extensions: list[str]) -> list[Path]:
    """The files under ``root`` whose name ends in one of ``extensions`` (any case), hidden files and
    folders (``.name``) skipped, sorted by their path under ``root``."""
    ends = tuple(e.lower() for e in extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".") and f.lower().endswith(ends)]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def folder_place(rel: Path, split_level: bool) -> tuple[str, str] | str:
    """``(source_split, class folder)`` of a file at ``rel`` (its path under the input folder), or what is
    wrong with its place. ``split_level``: some top folder is a split folder, so every file must be in one."""
    parts, name = rel.parts, rel.as_posix()
    split = SPLIT_FOLDERS.get(parts[0].lower(), "") if len(parts) > 1 else ""
    if len(parts) == 1:
        return f"{name}: lies directly in the input folder, not in a class folder; expected {LAYOUT}"
    if split and len(parts) == 2:
        return f"{name}: lies directly in the split folder {parts[0]!r}, not in a class folder; expected {LAYOUT}"
    if split_level and not split:
        return (f"{name}: the top folder {parts[0]!r} is not a split folder, but other top folders are; "
                f"expected every file as <input>/<split>/<class>/<file> (split: train, val/validation or test)")
    if len(parts) > (3 if split else 2):
        return f"{name}: nested too deep (in {rel.parent.as_posix()!r}); expected {LAYOUT}"
    return split, parts[-2]


def _read_folders(cfg: Config) -> tuple[pd.DataFrame, list[tuple[str, str]], dict[str, int]]:
    """:func:`read_labels` for ``labels_from: folders``: one row per image file under ``ingest.input``."""
    ic, root = cfg.ingest.images, Path(cfg.ingest.input)
    if not root.is_dir():
        raise StageError(f"ingest.input: image folder {root} does not exist")
    files = image_files(root, ic.extensions)
    if not files:
        raise StageError(f"ingest.input: no image files ({', '.join(ic.extensions)}, any case) under {root}; "
                         f"ingest.images.labels_from: folders expects {LAYOUT}")
    errors: list[tuple[str, str]] = []
    placed = _placed(files, root, ic.folder_classes, errors)
    label = _labels(pd.Series([p["class"] for p in placed], dtype=object), ic)
    rows = []
    for p, lab in zip(placed, label):
        if lab < 0:
            continue
        patient = patient_from_name(p["file"].name, ic.patient_regex) if ic.patient_regex else p["sample_id"]
        if patient is None:
            errors.append((f"image {p['sample_id']}", f"{p['sample_id']}: {_no_patient(p['file'].name, ic.patient_regex)}"))
            continue
        rows.append({**p, "patient_id": patient, "label": int(lab), "source": "", "spacing_csv": np.nan})
    return pd.DataFrame(rows, columns=COLUMNS), errors, {"rows": len(files), "left_out_by_label": int((label < 0).sum())}


def _placed(files: list[Path], root: Path, folder_classes: list[str] | None, errors: list) -> list[dict]:
    """sample_id, file, class and source_split of each file in a usable place (and an allowed class
    folder); one error per other file."""
    rels = [f.relative_to(root) for f in files]
    split_level = any(len(r.parts) > 1 and r.parts[0].lower() in SPLIT_FOLDERS for r in rels)
    allowed = None if folder_classes is None else {canonical_class(c) for c in folder_classes}
    out = []
    for file, rel in zip(files, rels):
        sample_id, place = rel.as_posix(), folder_place(rel, split_level)
        if isinstance(place, str):
            errors.append((f"image {sample_id}", place))
        elif allowed is not None and canonical_class(place[1]) not in allowed:
            errors.append((f"image {sample_id}", f"{sample_id}: unknown folder {place[1]!r}, not one of "
                                                 f"ingest.images.folder_classes ({', '.join(folder_classes)})"))
        else:
            out.append({"sample_id": sample_id, "file": file, "class": canonical_class(place[1]), "source_split": place[0]})
    return out
