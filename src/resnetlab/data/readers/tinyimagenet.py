"""Tiny ImageNet 200 in its published layout.

``wnids.txt`` lists the 200 WordNet ids; ``words.txt`` maps ids to readable
names; ``train/<wnid>/images/*.JPEG``; ``val/images/*.JPEG`` labelled by
``val/val_annotations.txt`` (tab-separated: file, wnid, box); ``test/images``
has no labels and is left to ``predict``. Classes are sorted by wnid, the order
torchvision's ImageFolder gives ``train/``, so indices agree with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from resnetlab.data.catalog import Catalog, from_files
from resnetlab.data.images import is_image_file
from resnetlab.errors import UserError


def find(root: Path) -> Path | None:
    for where in (root, root / "tiny-imagenet-200"):
        if (where / "wnids.txt").is_file() and (where / "train").is_dir():
            return where
    return None


def _names(root: Path, wnids: list[str]) -> list[str]:
    """First synonym from words.txt ('goldfish, Carassius auratus' -> 'goldfish'), unique."""
    words = {}
    path = root / "words.txt"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip() or wnid
    names = [words.get(w, w) for w in wnids]
    # ImageNet has homonyms (two 'crane's, two 'maillot's): keep names unique with the wnid
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids)]


def read(root: Path) -> Catalog:
    wnid_file = root / "wnids.txt"
    listed = [w.strip() for w in wnid_file.read_text().splitlines() if w.strip()]
    if len(set(listed)) != len(listed):
        raise UserError(f"{wnid_file} lists a wnid twice")
    wnids = sorted(listed)
    index = {w: i for i, w in enumerate(wnids)}
    on_disk = {p.name for p in (root / "train").iterdir() if p.is_dir()}
    extra = sorted(on_disk - set(wnids))
    if extra:
        raise UserError(f"{root / 'train'} has folder {extra[0]} that {wnid_file} does not list")
    paths, keys, labels, splits = [], [], [], []
    for line, wnid in enumerate(listed, start=1):
        folder = root / "train" / wnid / "images"
        files = sorted(f for f in os.listdir(folder) if is_image_file(Path(f))) if folder.is_dir() else []
        if not files:
            raise UserError(f"{wnid_file} line {line}: {wnid} has no images in {folder}")
        for f in files:
            paths.append(str(folder / f))
            keys.append(f"train/{wnid}/images/{f}")
            labels.append(index[wnid])
            splits.append("train")
    notes = []
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        present = set(os.listdir(root / "val" / "images")) if (root / "val" / "images").is_dir() else set()
        for line, text in enumerate(annotations.read_text().splitlines(), start=1):
            if not text.strip():
                continue
            cells = text.split("\t")
            if len(cells) < 2:
                raise UserError(f"{annotations} line {line}: expected 'file<TAB>wnid<TAB>box', got {text[:60]!r}")
            name, wnid = cells[0], cells[1]
            if wnid not in index:
                raise UserError(f"{annotations} line {line}: {wnid} is not in {wnid_file}")
            if name not in present:
                raise UserError(f"{annotations} line {line}: {name} is not in {root / 'val' / 'images'}")
            paths.append(str(root / "val" / "images" / name))
            keys.append(f"val/images/{name}")
            labels.append(index[wnid])
            splits.append("val")
    else:
        notes.append(f"{annotations} is missing: no val split")
    return from_files(_names(root, wnids), wnids, paths, keys, labels, splits, notes=notes)
