"""A catalog: every labelled image of a data set, whatever its layout, in one table.

Each layout reader (class folders, GTSRB, Tiny ImageNet, CSV, IDX, CIFAR) turns
its files into a Catalog; choosing classes, adding the "unknown" class and
holding out val/test splits then work the same way for all of them. Rows are
identified by a ``key`` that survives a move of the data folder: the file's path
relative to the data set root, or ``<split>/<index>`` for array formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from resnetlab.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass
class Catalog:
    classes: list[str]  # readable names, in label order
    class_ids: list[str]  # on-disk ids (folder name, wnid, GTSRB ClassId): what a user may also type
    keys: list[str]  # one per row: relative path, or '<split>/<index>' for arrays
    # (N,) int64: the class; multi-label: a one-class summary, each image's rarest label
    # (len(classes) for an image with none), the labels themselves being ``targets``
    labels: np.ndarray
    splits: np.ndarray  # (N,) str, one of SPLITS
    paths: list[str] | None = None  # absolute files, for file layouts
    arrays: np.ndarray | None = None  # (N, C, H, W) uint8, for array layouts
    groups: np.ndarray | None = None  # (N,) int64: rows that must share a split (GTSRB tracks)
    boxes: np.ndarray | None = None  # (N, 4) int: x1, y1, x2, y2 region of interest, inclusive px
    sizes: np.ndarray | None = None  # (N, 2) int: width, height where the annotations give them
    targets: np.ndarray | None = None  # (N, K) uint8 multi-hot: multi-label data only (a row may be all 0)
    notes: list[str] = field(default_factory=list)  # what the reader wants the user to know
    # (path, reason) of files the reader saw but cannot use (a dangling symlink): reported with bad images
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows: np.ndarray) -> "Catalog":
        """The rows ``rows`` (indices), every column kept in step."""
        rows = np.asarray(rows, dtype=np.int64)

        def pick(column):
            return None if column is None else column[rows]

        return replace(
            self,
            keys=[self.keys[i] for i in rows],
            labels=self.labels[rows],
            splits=self.splits[rows],
            paths=None if self.paths is None else [self.paths[i] for i in rows],
            arrays=pick(self.arrays),
            groups=pick(self.groups),
            boxes=pick(self.boxes),
            sizes=pick(self.sizes),
            targets=pick(self.targets),
        )

    def label_text(self, row: int) -> str:
        """A row's class name; multi-label: its names joined by spaces ('' for none)."""
        if self.targets is not None:
            return " ".join(self.classes[k] for k in np.flatnonzero(self.targets[row]))
        return self.classes[self.labels[row]]

    def has_label(self, rows: np.ndarray, k: int) -> np.ndarray:
        """Which of ``rows`` carry class k (multi-label: among others)."""
        return self.targets[rows, k] > 0 if self.targets is not None else self.labels[rows] == k

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def present_splits(self) -> list[str]:
        return [s for s in SPLITS if (self.splits == s).any()]

    def counts(self) -> dict[str, list[int]]:
        """Images per class, per split: {'train': [n_0, n_1, ...], ...} (multi-label: images carrying it)."""
        k = len(self.classes)
        if self.targets is not None:
            return {s: self.targets[self.splits == s].sum(0).astype(int).tolist() for s in self.present_splits()}
        return {s: np.bincount(self.labels[self.splits == s], minlength=k).tolist() for s in self.present_splits()}


def from_arrays(classes: list[str], parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> Catalog:
    """Array formats (IDX, CIFAR): {'train': (images (N, C, H, W) uint8, labels (N,)), 'test': ...}."""
    names = [s for s in SPLITS if s in parts]
    images = np.concatenate([parts[s][0] for s in names])
    labels = np.concatenate([np.asarray(parts[s][1], dtype=np.int64) for s in names])
    splits = np.concatenate([np.full(len(parts[s][1]), s) for s in names]).astype("<U5")
    keys = [f"{s}/{i}" for s in names for i in range(len(parts[s][1]))]
    return Catalog(classes, list(classes), keys, labels, splits, arrays=images)


def from_files(classes: list[str], class_ids: list[str] | None, paths: list[str], keys: list[str],
               labels, splits, *, notes: list[str] | None = None,
               skipped: list[tuple[str, str]] | None = None, **columns) -> Catalog:
    """File formats: one row per file; ``columns`` may add groups, boxes and sizes."""
    out = Catalog(
        classes, list(class_ids or classes), list(keys), np.asarray(labels, dtype=np.int64),
        np.asarray(splits, dtype="<U5"), paths=list(paths), notes=list(notes or []), skipped=list(skipped or []),
    )
    for name, value in columns.items():
        setattr(out, name, None if value is None else np.asarray(value, dtype=np.int64))
    return out


def strata(targets: np.ndarray) -> np.ndarray:
    """(N,) each row's rarest label (by images carrying it), K for a row with none."""
    counts = targets.sum(0).astype(np.float64)
    rarity = np.where(targets > 0, counts[None, :], np.inf)  # (N, K): a label's count where the row has it
    out = rarity.argmin(1)
    out[~targets.any(1)] = targets.shape[1]
    return out.astype(np.int64)


def check_labels(catalog: Catalog, source: str) -> None:
    if len(catalog) and (catalog.labels.min() < 0 or catalog.labels.max() >= len(catalog.classes)):
        bad = int(np.flatnonzero((catalog.labels < 0) | (catalog.labels >= len(catalog.classes)))[0])
        raise UserError(
            f"{source}: {catalog.keys[bad]} has label {int(catalog.labels[bad])} but there are "
            f"{len(catalog.classes)} classes (0..{len(catalog.classes) - 1})"
        )
