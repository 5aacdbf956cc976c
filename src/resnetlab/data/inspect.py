"""`resnetlab data inspect`: the first look at a data set, before any training.

Indexes every image the run would use (after class selection and splits), in
threads: opens and fully decodes each file (so truncated and non-image files
show up here, not in epoch 3), records its size, and hashes its decoded pixels.
Pixel hashes find exact duplicates even across formats (a PNG and a PPM of the
same picture); duplicates that cross splits are leaks, which make test
accuracy a measure of memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resnetlab.config import Config
from resnetlab.data.augment import BatchAugment, make_generator
from resnetlab.data.bundle import plan_data
from resnetlab.data.catalog import Catalog
from resnetlab.data.decode import resize_tensor, set_channels
from resnetlab.data.images import BadImage, load_array, open_image
from resnetlab.io import atomic_write_text, csv_text, write_json


@dataclass
class Scan:
    widths: np.ndarray  # (N,) px; -1 where unreadable
    heights: np.ndarray
    digests: list[str | None]  # pixel hash per row; None where unreadable
    errors: dict[int, str]  # row -> why it cannot be read


def _digest(mode: str, size: tuple[int, int], pixels: bytes) -> str:
    h = hashlib.blake2b(pixels, digest_size=16)
    h.update(f"{mode}{size}".encode())
    return h.hexdigest()


def scan(catalog: Catalog, progress: bool = True) -> Scan:
    n = len(catalog)
    widths, heights = np.full(n, -1), np.full(n, -1)
    digests: list[str | None] = [None] * n
    errors: dict[int, str] = {}
    if catalog.arrays is not None:
        _, _, h, w = catalog.arrays.shape
        widths[:], heights[:] = w, h
        for i in range(n):
            digests[i] = _digest("array", (w, h), catalog.arrays[i].tobytes())
        return Scan(widths, heights, digests, errors)

    def one(i: int):
        try:
            img = open_image(catalog.paths[i])
            return i, img.size, _digest(img.mode, img.size, img.tobytes()), None
        except BadImage as e:
            return i, (-1, -1), None, str(e)

    with ThreadPoolExecutor(min(8, (os.cpu_count() or 1) * 2)) as pool:
        results = pool.map(one, range(n), chunksize=256)
        if progress and n > 2000:
            from rich.progress import track

            results = track(results, total=n, description="indexing images", transient=True)
        for i, (w, h), digest, err in results:
            widths[i], heights[i], digests[i] = w, h, digest
            if err is not None:
                errors[i] = err
    return Scan(widths, heights, digests, errors)


def duplicates(catalog: Catalog, result: Scan) -> list[list[int]]:
    """Groups of 2+ rows with identical pixels, largest first."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(result.digests):
        if d is not None:
            by_hash[d].append(i)
    return sorted((rows for rows in by_hash.values() if len(rows) > 1), key=lambda r: (-len(r), r[0]))


def _tiles(catalog: Catalog, rows: list[int], size: int, cfg: Config) -> np.ndarray:
    """(len(rows), size, size, 3) uint8 thumbnails; grey where a file is unreadable."""
    out = np.full((len(rows), size, size, 3), 128, dtype=np.uint8)
    for j, i in enumerate(rows):
        if catalog.arrays is not None:
            x = resize_tensor(set_channels(torch.from_numpy(catalog.arrays[i:i + 1]), 3), size)
            out[j] = x[0].permute(1, 2, 0).numpy()
            continue
        box = catalog.boxes[i] if cfg.data.roi_crop and catalog.boxes is not None else None
        try:
            out[j] = load_array(catalog.paths[i], size, cfg.data.resize, box, cfg.data.roi_margin)[0]
        except BadImage:
            pass
    return out


def _augmented(catalog: Catalog, row: int, cfg: Config, count: int) -> np.ndarray:
    """One training image under the training augmentation ``count`` times; the first is unaugmented."""
    size = cfg.data.image_size or (int(catalog.arrays.shape[-1]) if catalog.arrays is not None else 64)
    image = torch.from_numpy(_tiles(catalog, [row], size, cfg)[0]).permute(2, 0, 1)
    batch = image[None].expand(count - 1, -1, -1, -1).contiguous()
    # everything but mixing, which needs other images: policy and erasing show here too
    unmixed = dataclasses.replace(cfg.augment, mixup_alpha=0.0, cutmix_alpha=0.0)
    views, _ = BatchAugment(unmixed, num_classes=1)(batch, torch.zeros(len(batch), dtype=torch.long),
                                                    make_generator(cfg.seed, 0xA06))
    return torch.cat([image[None], views]).permute(0, 2, 3, 1).numpy()


def inspect(cfg: Config, out_dir: Path, *, samples: int = 8, progress: bool = True) -> dict:
    """Index, check and draw the data set of ``cfg``; write everything under ``out_dir``."""
    from resnetlab.data import figures as plots

    started = time.perf_counter()
    catalog, root, notes = plan_data(cfg)
    planned = time.perf_counter()
    result = scan(catalog, progress=progress)
    indexed = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = catalog.counts()
    splits = list(counts)

    atomic_write_text(out_dir / "counts.csv", csv_text(
        [["class_id", "class", *splits, "total"]]
        + [[cid, name, *(counts[s][k] for s in splits), sum(counts[s][k] for s in splits)]
           for k, (cid, name) in enumerate(zip(catalog.class_ids, catalog.classes))]))
    bad = sorted(result.errors.items())
    atomic_write_text(out_dir / "bad_files.csv", csv_text(
        [["path", "split", "class", "reason"]]
        + [[catalog.paths[i], catalog.splits[i], catalog.label_text(i), why] for i, why in bad]))
    groups = duplicates(catalog, result)
    dup_rows = [["group", "key", "split", "class"]]
    leaks, conflicts, within = defaultdict(int), 0, 0
    for g, rows in enumerate(groups):
        dup_rows += [[g, catalog.keys[i], catalog.splits[i], catalog.label_text(i)] for i in rows]
        in_splits = sorted(set(catalog.splits[rows].tolist()))
        for a in range(len(in_splits)):
            for b in range(a + 1, len(in_splits)):
                leaks[f"{in_splits[a]}-{in_splits[b]}"] += 1
        within += len(rows) - len(set(catalog.splits[rows].tolist()))
        conflicts += len({catalog.label_text(i) for i in rows}) > 1
    atomic_write_text(out_dir / "duplicates.csv", csv_text(dup_rows))

    ok = result.widths > 0
    sizes = {}
    if ok.any():
        w, h = result.widths[ok], result.heights[ok]
        sizes = {"width": [int(w.min()), int(np.median(w)), int(w.max())],
                 "height": [int(h.min()), int(np.median(h)), int(h.max())]}
    plots.class_counts(catalog.classes, counts, out_dir / "counts.png")
    if ok.any():
        plots.image_sizes(result.widths[ok], result.heights[ok], out_dir / "sizes.png")

    rng = np.random.default_rng(cfg.seed)
    readable = np.array([i not in result.errors for i in range(len(catalog))], dtype=bool)
    train_rows = np.flatnonzero((catalog.splits == "train") & readable)
    shown = list(range(min(len(catalog.classes), 50)))  # 200 rows of thumbnails are unreadable
    per_class = []
    for k in shown:
        rows = train_rows[catalog.has_label(train_rows, k)]
        per_class.append(rng.permutation(rows)[:samples].tolist())
    tiles = [_tiles(catalog, rows, 64, cfg) for rows in per_class]
    plots.sample_grid([catalog.classes[k] for k in shown], tiles, samples, out_dir / "samples.png")
    if len(train_rows):
        row = int(rng.choice(train_rows))
        views = _augmented(catalog, row, cfg, 16)
        plots.augment_grid(views, f"{catalog.keys[row]} ({catalog.label_text(row) or 'no label'})",
                           out_dir / "augment.png")

    summary = {
        "dataset": cfg.data.dataset, "root": str(root), "images": len(catalog), "classes": catalog.classes,
        "counts": counts, "sizes_px": sizes, "bad_files": len(bad),
        "duplicate_groups": len(groups), "duplicates_within_split": within, "leaks": dict(leaks),
        "label_conflicts": conflicts, "notes": notes, "seconds": {
            "catalog": round(planned - started, 2), "index": round(indexed - planned, 2),
            "total": round(time.perf_counter() - started, 2)},
    }
    if catalog.targets is not None:
        summary["label_sets"] = label_sets(catalog, out_dir)
    write_json(out_dir / "summary.json", summary)
    return summary


def label_sets(catalog: Catalog, out_dir: Path) -> dict:
    """Multi-label: images by their number of labels, and how often each pair of labels shares an
    image (cooccurrence.csv: K x K counts over every split; the diagonal is each label's count)."""
    t = catalog.targets.astype(np.int64)
    together = t.T @ t  # (K, K)
    names = catalog.classes
    atomic_write_text(out_dir / "cooccurrence.csv", csv_text([["", *names]] + [[n, *row] for n, row in
                                                                          zip(names, together.tolist())]))
    per_image = np.bincount(t.sum(1), minlength=1)
    pairs = [(int(together[a, b]), names[a], names[b]) for a in range(len(names)) for b in range(a + 1, len(names))]
    pairs.sort(key=lambda p: -p[0])
    return {"labels_per_image": {str(k): int(n) for k, n in enumerate(per_image) if n},
            "mean_labels_per_image": round(float(t.sum(1).mean()), 3) if len(t) else 0.0,
            "top_pairs": [[a, b, n] for n, a, b in pairs[:10] if n]}
