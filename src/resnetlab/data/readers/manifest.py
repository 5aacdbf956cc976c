"""CSV files: a data set given as ``path,label[,split]`` rows, and the split file each run writes.

A data set CSV names images relative to the CSV's own folder (or absolute), a
label per row (a class name; all-integer labels sort as numbers), and optionally
a split (train, val or test; empty means train). A header row is optional.

``split.csv`` in a run folder lists every image the run used as ``key,label,split``
(the key as the catalog names it). ``resume``, ``evaluate`` and any later run
given ``data.split_file=...`` take the same images in the same splits from it,
rather than drawing them again.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from resnetlab.data.catalog import SPLITS, Catalog, from_files
from resnetlab.errors import UserError

_SPLIT_ALIASES = {"": "train", "training": "train", "valid": "val", "validation": "val", "testing": "test"}


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".csv", ".tsv")


def read_manifest(path: Path) -> Catalog:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    start = 1 if rows and rows[0] and rows[0][0].strip().lower() in ("path", "file", "filename") else 0
    columns = {"path": 0, "label": 1, "split": 2}
    if start:
        header = [c.strip().lower() for c in rows[0]]
        if "label" not in header:
            raise UserError(f"{path}: the header has no 'label' column (expected path,label[,split])")
        columns = {k: header.index(k) for k in ("path", "label", "split") if k in header}
    base = path.parent
    listed: dict[str, set[str]] = {}
    paths, keys, labels, splits = [], [], [], []
    for line, row in enumerate(rows[start:], start=start + 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= columns["label"]:
            raise UserError(f"{path} row {line}: expected path,label[,split], got {delimiter.join(row)!r}")
        rel = row[columns["path"]].strip()
        file = Path(rel) if os.path.isabs(rel) else base / rel
        folder = str(file.parent)
        if folder not in listed:
            listed[folder] = set(os.listdir(folder)) if file.parent.is_dir() else set()
        if file.name not in listed[folder]:
            raise UserError(f"{path} row {line}: {rel} does not exist (paths are relative to {base})")
        split = row[columns["split"]].strip().lower() if "split" in columns and len(row) > columns["split"] else ""
        split = _SPLIT_ALIASES.get(split, split)
        if split not in SPLITS:
            raise UserError(f"{path} row {line}: split {split!r} should be train, val or test")
        label = row[columns["label"]].strip()
        if not label:
            raise UserError(f"{path} row {line}: the label is empty")
        paths.append(str(file))
        keys.append(rel)
        labels.append(label)
        splits.append(split)
    if not paths:
        raise UserError(f"{path} lists no images (expected rows of path,label[,split])")
    names = sorted(set(labels), key=lambda s: (int(s), s) if s.lstrip("-").isdigit() else (float("inf"), s))
    index = {n: i for i, n in enumerate(names)}
    return from_files(names, names, paths, keys, [index[n] for n in labels], splits)


def split_file_text(catalog: Catalog) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["key", "label", "split"])
    for key, label, split in zip(catalog.keys, catalog.labels.tolist(), catalog.splits.tolist()):
        writer.writerow([key, catalog.classes[label], split])
    return buffer.getvalue()


def read_split_file(path: Path) -> list[tuple[str, str, str]]:
    """(key, label, split) for every row of a run's split.csv, read with the csv module (so a key
    with a comma or a quote survives); a missing or malformed file is a one-line UserError."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]
    except FileNotFoundError:
        raise UserError(f"split file {path} does not exist: a run folder keeps its images and splits there") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read split file {path}: {e}") from None
    if not rows or rows[0] != ["key", "label", "split"]:
        raise UserError(f"{path} is not a resnetlab split file (its header should be key,label,split)")
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3:
            raise UserError(f"{path} row {line}: expected key,label,split")
        if row[2] not in SPLITS:
            raise UserError(f"{path} row {line}: split {row[2]!r} should be train, val or test")
        out.append((row[0], row[1], row[2]))
    return out


def apply_split_file(catalog: Catalog, path: Path, classes: list[str]) -> Catalog:
    """The catalog's rows that ``path`` names, with its labels (among ``classes``) and splits."""
    rows = read_split_file(path)
    where = {k: i for i, k in enumerate(catalog.keys)}
    index = {c: i for i, c in enumerate(classes)}
    take, labels, splits = [], [], []
    for line, (key, label, split) in enumerate(rows, start=2):
        if key not in where:
            raise UserError(f"{path} row {line}: {key} is not in the data set any more")
        if label not in index:
            raise UserError(f"{path} row {line}: class {label!r} is not among this data's classes")
        take.append(where[key])
        labels.append(index[label])
        splits.append(split)
    out = catalog.take(np.array(take, dtype=np.int64))
    out.classes = list(classes)
    out.labels = np.array(labels, dtype=np.int64)
    out.splits = np.array(splits, dtype="<U5")
    return out
