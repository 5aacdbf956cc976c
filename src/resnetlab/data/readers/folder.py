"""A folder per class: ``root/<class>/*.jpg``, or ``root/{train,val,test}/<class>/*.jpg``.

Kaggle's layouts are read too: split folders named ``seg_train``/``seg_test`` (Intel
scenes) and a folder doubled by unzipping (``seg_train/seg_train/<class>``).

Only lists files; decoding happens in the cache (or in streaming workers).
Class order is sorted folder names, as torchvision's ImageFolder sorts them, so
class indices agree with a torchvision model trained on the same folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from resnetlab.data.catalog import Catalog, from_files
from resnetlab.data.images import IMAGE_SUFFIXES
from resnetlab.errors import UserError

SPLIT_NAMES = {
    "train": ("train", "training", "seg_train"),
    "val": ("val", "valid", "validation", "seg_val"),
    "test": ("test", "testing", "seg_test"),
}


@dataclass
class FileList:
    paths: list[str]
    labels: list[int]
    dangling: list[str] = field(default_factory=list)  # image-named symlinks whose target is gone


def _images_in(folder: Path) -> tuple[list[str], list[str]]:
    """Image files under ``folder``, and image-named symlinks that point nowhere, sorted as paths
    (part by part). os.scandir reads each folder's names and types in one call: no stat a file
    (rglob + is_file costs ~10 s for 60,000 CIFAR files). Symlinked folders are not entered, as rglob."""
    files, dangling, stack = [], [], [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.name.startswith(".") or os.path.splitext(e.name)[1].lower() not in IMAGE_SUFFIXES:
                    continue
                elif e.is_file():
                    files.append(e.path)
                elif e.is_symlink() and not os.path.exists(e.path):
                    dangling.append(e.path)
    return sorted(files, key=_parts), sorted(dangling, key=_parts)


def _parts(path: str) -> list[str]:
    return path.split(os.sep)


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _unwrap(folder: Path) -> Path:
    """``seg_train/seg_train`` (a zip's own folder inside the one it was unzipped to) -> the inner one."""
    inner = folder / folder.name
    only_child = [p for p in folder.iterdir() if not p.name.startswith(".")] == [inner]
    return inner if inner.is_dir() and only_child else folder


def _split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = _unwrap(root / name)
                break
    return found


def is_class_folder(root: Path) -> bool:
    return root.is_dir() and ("train" in _split_dirs(root) or any(_class_dirs(root)))


def list_class_folder(root: Path) -> tuple[list[str], dict[str, FileList]]:
    """Class names and the files of each split present ('train' always, 'val'/'test' if there)."""
    splits = _split_dirs(root)
    if "train" not in splits:
        splits = {"train": root}
    classes = [d.name for d in _class_dirs(splits["train"])]
    if not classes:
        raise UserError(f"{splits['train']} has no class folders: expected {splits['train']}/<class>/<image>")
    out = {}
    for split, folder in splits.items():
        names = [d.name for d in _class_dirs(folder)]
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise UserError(
                f"{folder} has class folder '{unknown[0]}' that {splits['train']} lacks; "
                "every split must use the training classes"
            )
        paths, labels, dangling = [], [], []
        for name in names:
            files, broken = _images_in(folder / name)
            if not files and split == "train":
                raise UserError(f"class folder {folder / name} has no images: add some or remove the folder")
            paths += files
            labels += [classes.index(name)] * len(files)
            dangling += broken
        out[split] = FileList(paths, labels, dangling)
    return classes, out


def relative_key(path: str, root: Path) -> str:
    """``path`` relative to ``root``, '/'-separated: a string cut where the path is under root
    (60,000 Path.relative_to calls take seconds), else pathlib's answer."""
    prefix = str(root) + os.sep
    if path.startswith(prefix):
        return path[len(prefix):].replace(os.sep, "/")
    return Path(path).relative_to(root).as_posix()


def read(root: Path) -> Catalog:
    classes, lists = list_class_folder(root)
    paths, keys, labels, splits = [], [], [], []
    for split, files in lists.items():
        paths += files.paths
        keys += [relative_key(p, root) for p in files.paths]
        labels += files.labels
        splits += [split] * len(files.paths)
    skipped = [(p, "a symbolic link whose target does not exist") for f in lists.values() for p in f.dangling]
    return from_files(classes, classes, paths, keys, labels, splits, skipped=skipped)
