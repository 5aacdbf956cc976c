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
import os
from pathlib import Path

import numpy as np

from resnetlab.data.catalog import SPLITS, Catalog, from_files, strata
from resnetlab.errors import UserError
from resnetlab.io import csv_text

_SPLIT_ALIASES = {"": "train", "training": "train", "valid": "val", "validation": "val", "testing": "test"}


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".csv", ".tsv")


_PATH_NAMES = ("path", "file", "filename", "image", "image_name", "image_id", "id")
_LABEL_NAMES = ("label", "labels", "tags", "tag", "class", "classes")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def _columns(rows: list[list[str]], path: Path) -> tuple[int, dict[str, int]]:
    """Where the data starts and which column is which: a header names them (path, label and split,
    or Planet Amazon's image_name,tags); without one they are path,label[,split] in that order."""
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if not header or header[0] not in _PATH_NAMES:
        return 0, {"path": 0, "label": 1, "split": 2}
    label = next((header.index(n) for n in _LABEL_NAMES if n in header), None)
    if label is None:
        raise UserError(f"{path}: the header has no label column (expected path,label[,split] or image_name,tags)")
    columns = {"path": 0, "label": label}
    if "split" in header:
        columns["split"] = header.index("split")
    return 1, columns


def _find_file(rel: str, base: Path, listed: dict[str, set[str]]) -> Path | None:
    """The file a row names, relative to the CSV's folder; a name without a suffix (Planet's
    'train_0') may match one image suffix. Folders are listed once (a stat a row is slow on NFS)."""
    file = Path(rel) if os.path.isabs(rel) else base / rel
    folder = str(file.parent)
    if folder not in listed:
        listed[folder] = set(os.listdir(folder)) if file.parent.is_dir() else set()
    if file.name in listed[folder]:
        return file
    if not file.suffix:
        return next((file.with_name(file.name + x) for x in _IMAGE_SUFFIXES if file.name + x in listed[folder]), None)
    return None


def read_manifest(path: Path, *, multi_label: bool = False) -> Catalog:
    """A CSV's rows; with ``multi_label`` the label column holds space-separated names (or none)."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    start, columns = _columns(rows, path)
    base = path.parent
    listed: dict[str, set[str]] = {}
    paths, keys, labels, splits = [], [], [], []
    for line, row in enumerate(rows[start:], start=start + 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= columns["label"]:
            raise UserError(f"{path} row {line}: expected path,label[,split], got {delimiter.join(row)!r}")
        rel = row[columns["path"]].strip()
        file = _find_file(rel, base, listed)
        if file is None:
            raise UserError(f"{path} row {line}: {rel} does not exist (paths are relative to {base})")
        split = row[columns["split"]].strip().lower() if "split" in columns and len(row) > columns["split"] else ""
        split = _SPLIT_ALIASES.get(split, split)
        if split not in SPLITS:
            raise UserError(f"{path} row {line}: split {split!r} should be train, val or test")
        label = row[columns["label"]].strip()
        if multi_label:
            label = _label_set(label, f"{path} row {line}")  # () for none
        elif not label:
            raise UserError(f"{path} row {line}: the label is empty (an image with several labels or none is "
                            "multi-label data: train from this CSV with data.multi_label=true)")
        paths.append(str(file))
        keys.append(rel)
        labels.append(label)
        splits.append(split)
    if not paths:
        raise UserError(f"{path} lists no images (expected rows of path,label[,split])")
    if multi_label:
        if not any(labels):
            raise UserError(f"{path}: no image has a label, so there is nothing to learn (labels go in the "
                            f"'{rows[0][columns['label']] if start else 'label'}' column, separated by spaces)")
        return label_set_catalog(paths, keys, labels, splits)
    names = _sorted_names(set(labels))
    index = {n: i for i, n in enumerate(names)}
    catalog = from_files(names, names, paths, keys, [index[n] for n in labels], splits)
    if any(" " in n for n in names):
        catalog.notes.append(f"labels such as {next(n for n in names if ' ' in n)!r} are read as one class each; "
                             "if they are sets of labels, set data.multi_label=true")
    return catalog


def _sorted_names(names: set[str]) -> list[str]:
    """Class names in label order: all-integer names as numbers, the rest alphabetically."""
    return sorted(names, key=lambda s: (int(s), s) if s.lstrip("-").isdigit() else (float("inf"), s))


def _label_set(text: str, where: str) -> tuple[str, ...]:
    """'agriculture clear primary' -> its names; '' is an image with none of the labels."""
    names = tuple(text.split(" ")) if text else ()
    if "" in names:
        raise UserError(f"{where}: an empty class name in {text!r}: separate labels by one space")
    return names


def label_set_catalog(paths: list[str], keys: list[str], sets: list[tuple[str, ...]], splits: list[str]) -> Catalog:
    """A multi-label catalog: multi-hot ``targets`` ((N, K) uint8), and each image's rarest label as its
    one-class summary in ``labels`` (held-out splits are drawn from the targets: data/split.py)."""
    names = _sorted_names({n for labels in sets for n in labels})
    index = {n: i for i, n in enumerate(names)}
    targets = _multi_hot([[index[n] for n in labels] for labels in sets], len(names))
    catalog = from_files(names, names, paths, keys, strata(targets), splits)
    catalog.targets = targets
    return catalog


def _multi_hot(ids: list[list[int]], k: int) -> np.ndarray:
    """(N, k) uint8: row i is 1 at the class indices ids[i]."""
    out = np.zeros((len(ids), k), dtype=np.uint8)
    for row, classes in enumerate(ids):
        out[row, classes] = 1
    return out


def split_file_text(catalog: Catalog) -> str:
    """key,label,split a row; a multi-label row's label is its names joined by spaces ('' for none)."""
    return csv_text([["key", "label", "split"],
                     *([key, catalog.label_text(i), split] for i, (key, split) in
                       enumerate(zip(catalog.keys, catalog.splits.tolist())))])


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
    multi = catalog.targets is not None
    take, labels, splits = [], [], []
    for line, (key, label, split) in enumerate(rows, start=2):
        if key not in where:
            raise UserError(f"{path} row {line}: {key} is not in the data set any more")
        names = _label_set(label, f"{path} row {line}") if multi else (label,)
        for name in names:
            if name not in index:
                raise UserError(f"{path} row {line}: class {name!r} is not among this data's classes")
        take.append(where[key])
        labels.append([index[n] for n in names])
        splits.append(split)
    out = catalog.take(np.array(take, dtype=np.int64))
    out.classes = list(classes)
    out.splits = np.array(splits, dtype="<U5")
    if multi:
        out.targets = _multi_hot(labels, len(classes))
        out.labels = strata(out.targets)
    else:
        out.labels = np.array([ids[0] for ids in labels], dtype=np.int64)
    return out
