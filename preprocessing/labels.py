"""The labels CSV of an image folder (``ingest.format: images``): one row per image.

Columns (names from ``ingest.images``): the image (a path under ``ingest.input``, or an ID that
``extensions`` complete, as in ISIC 2018's ``image`` column), optionally the patient (or lesion),
and the class, either in one column (``label_column``) or as one-hot columns (``class_columns``,
ISIC 2018 Task 3: MEL, NV, BCC, AKIEC, BKL, DF, VASC). Optional: a predefined split column and a
per-image pixel spacing column.

Classes are compared as text, numbers canonically (``0``, ``0.0`` and YAML ``0`` are one class).
Each bad row (duplicate ID, missing file, no or several one-hot classes, bad split or spacing
value) becomes one error naming the CSV line; the other rows go on.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import StageError
from pipeline.core.inputs import INPUTS
from pipeline.core.schema import Config

SPLITS = ("train", "val", "test")


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
    Rows whose class is neither normal nor anomalous are left out (counted, not errors).
    """
    ic = cfg.ingest.images
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
    out = pd.DataFrame(rows, columns=["sample_id", "file", "patient_id", "class", "label", "source_split", "source", "spacing_csv", *ic.keep])
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
