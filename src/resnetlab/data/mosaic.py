"""A multi-label data set made from a single-label one: grid x grid mosaics of its images, each
labelled with the classes its tiles show.

Real multi-label photos (Planet Amazon, COCO's labels) are large downloads; mosaics of real
photos give a set whose true label sets are known exactly, with any number of labels an image,
from data already on disk. Train and test mosaics draw their tiles from disjoint source images,
so a held-out mosaic shows no photo the model trained on. ``tiles.csv`` lists those source
images as a single-label set (path,label,split), for a single-label model on the same tiles.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from resnetlab.errors import UserError
from resnetlab.io import atomic_write_text, csv_text

SUFFIX = ".png"  # lossless: the tiles are already JPEGs, a second lossy pass would blur their edges


def write_mosaics(source: str | Path, out: str | Path, *, train: int, test: int, tile: int = 32, grid: int = 2,
                  max_labels: int = 3, empty: float = 0.0, test_share: float = 0.2, seed: int = 0) -> Path:
    """Write ``train`` + ``test`` mosaics of (grid * tile) px under ``out``, and ``out/labels.csv``
    (image_name,tags,split; tags separated by spaces, '' for none). Each mosaic shows 1..max_labels
    classes, every one on at least one tile; with probability ``empty`` a mosaic is plain grey tiles
    and has no label. ``source``: any single-label layout resnetlab reads (class folders, CSV, ...)."""
    from resnetlab.data.readers.layouts import read_catalog

    catalog, _, _ = read_catalog(str(source))
    if catalog.paths is None:
        raise UserError(f"{source}: mosaics are made from image files (class folders or a CSV), not arrays")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(catalog))
    cut = int(round(len(order) * (1 - test_share)))
    pools = {"train": order[:cut], "test": order[cut:]}  # disjoint source images
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, tiles = [], []
    for split, count in (("train", train), ("test", test)):
        pool = pools[split]
        by_class = {c: pool[catalog.labels[pool] == c] for c in np.unique(catalog.labels[pool])}
        if len(by_class) < max_labels:
            raise UserError(f"{source}: the {split} pool has {len(by_class)} classes, "
                            f"fewer than max_labels={max_labels}")
        for i in range(count):
            name = f"{split}_{i:05d}{SUFFIX}"
            chosen, image = _mosaic(catalog, by_class, rng, tile=tile, grid=grid, max_labels=max_labels,
                                    empty=rng.random() < empty)
            image.save(out / name)
            rows.append([name, " ".join(sorted(catalog.classes[c] for c in chosen)), split])
        tiles += [[os.path.abspath(catalog.paths[i]), catalog.classes[catalog.labels[i]], split] for i in pool]
    atomic_write_text(out / "labels.csv", csv_text([["image_name", "tags", "split"], *rows]))
    atomic_write_text(out / "tiles.csv", csv_text([["path", "label", "split"], *tiles]))
    return out / "labels.csv"


def _mosaic(catalog, by_class: dict, rng: np.random.Generator, *, tile: int, grid: int, max_labels: int,
            empty: bool) -> tuple[list[int], Image.Image]:
    """One mosaic: the classes shown, and the image. Tiles are placed at random; each chosen class
    fills at least one, the rest go to chosen classes at random."""
    canvas = Image.new("RGB", (grid * tile, grid * tile))
    cells = grid * grid
    if empty:  # 'none of these': grey levels that carry no class
        for k in range(cells):
            grey = Image.new("RGB", (tile, tile), (int(rng.integers(40, 216)),) * 3)
            canvas.paste(grey, ((k % grid) * tile, (k // grid) * tile))
        return [], canvas
    classes = sorted(by_class)
    m = int(rng.integers(1, min(max_labels, cells) + 1))
    chosen = [int(c) for c in rng.choice(classes, size=m, replace=False)]
    shown = chosen + [int(c) for c in rng.choice(chosen, size=cells - m)]
    for k, c in enumerate(rng.permutation(shown)):
        path = catalog.paths[int(rng.choice(by_class[c]))]
        with Image.open(path) as im:
            canvas.paste(im.convert("RGB").resize((tile, tile), Image.BILINEAR),
                         ((k % grid) * tile, (k // grid) * tile))
    return chosen, canvas
