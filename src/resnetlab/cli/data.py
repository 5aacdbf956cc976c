"""`resnetlab data inspect DATASET [key=value ...]`: counts, sizes, samples, augmentations, bad files, duplicates.
`resnetlab data shards DATASET --out DIR [--shard-size N|SIZE]`: the data set as WebDataset tar shards."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

EXAMPLES = """examples:
  resnetlab data inspect gtsrb
  resnetlab data inspect gtsrb classes=12,13,14,17 unknown_fraction=0.1 test_fraction=0.1 val_fraction=0.1
  resnetlab data inspect path/to/class/folders --recipe fashion-mnist-fast --out inspect/mine
"""
SHARD_EXAMPLES = """examples:
  resnetlab data shards gtsrb --out shards/gtsrb
  resnetlab data shards path/to/class/folders --out shards/mine --shard-size 5000
then train from them (a folder of shards, or a brace pattern naming some):
  resnetlab train gtsrb-fast data.dataset=shards/gtsrb
  resnetlab train gtsrb-fast 'data.dataset=shards/gtsrb/train-{000000..000009}.tar'
"""


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="look at a data set before training on it")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    q = verbs.add_parser("inspect", help="images per class and split, sizes, sample grids, bad files, duplicates",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("dataset", help="a data set name, a folder, or a CSV of path,label[,split]")
    q.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data options, e.g. classes=12,13 val_fraction=0.1")
    q.add_argument("--recipe", help="take data and augmentation settings from this recipe")
    q.add_argument("--out", metavar="DIR", help="where to write (default: inspect/<data set name>)")
    q.add_argument("--samples", type=int, default=8, help="images per class in the sample grid")
    w = verbs.add_parser("shards",
                         help="write the data set as WebDataset tar shards (for many machines, object storage)",
                         epilog=SHARD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("dataset", help="a data set name, a folder, or a CSV of path,label[,split]")
    w.add_argument("--out", metavar="DIR", required=True, help="an empty or new folder for the shards")
    w.add_argument("--shard-size", default="256MB", metavar="N|SIZE",
                   help="images a shard (5000) or bytes a shard (256MB, the default; 1GB)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.verb == "shards":
        return run_shards(args)
    from rich.console import Console
    from rich.table import Table

    from resnetlab.config import load_config
    from resnetlab.data.inspect import inspect
    from resnetlab.errors import UserError

    if args.samples < 1:
        raise UserError("--samples must be at least 1")
    cfg = load_config(args.recipe, [f"data.dataset={args.dataset}", *args.overrides])
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(args.dataset.rstrip("/")).name or "data")
    out = Path(args.out or Path("inspect") / name)
    summary = inspect(cfg, out, samples=args.samples, progress=True)

    console = Console()
    counts = summary["counts"]
    table = Table(title=f"{summary['dataset']}: {summary['images']:,} images, {len(summary['classes'])} classes")
    table.add_column("class")
    for split in counts:
        table.add_column(split, justify="right")
    rows = list(enumerate(summary["classes"]))
    if len(rows) > 24:  # the 10 smallest and 10 largest by training count; all are in counts.csv
        first = next(iter(counts))
        rows.sort(key=lambda r: counts[first][r[0]])
        rows = rows[:10] + [(None, "...")] + rows[-10:]
    for k, cls in rows:
        table.add_row(cls, *(("" if k is None else f"{counts[s][k]:,}") for s in counts))
    table.add_row("all", *(f"{sum(v):,}" for v in counts.values()), style="bold")
    console.print(table)
    sets = summary.get("label_sets")
    for split, values in counts.items():
        lo, hi = min(values), max(values)
        unit = "images carrying a label" if sets else "images a class"
        console.print(f"{split}: {lo:,} to {hi:,} {unit}" + (f" ({hi / lo:.1f}x)" if lo else ""))
    if sets:  # multi-label: how many labels an image has, and which labels come together
        spread = ", ".join(f"{k}: {n:,}" for k, n in sets["labels_per_image"].items())
        console.print(f"labels an image (images): {spread}; mean {sets['mean_labels_per_image']}")
        pairs = ", ".join(f"{a}+{b} {n:,}" for a, b, n in sets["top_pairs"][:5]) or "none"
        console.print(f"labels most often together: {pairs} (all pairs in {out / 'cooccurrence.csv'})")
    if summary["sizes_px"]:
        w, h = summary["sizes_px"]["width"], summary["sizes_px"]["height"]
        console.print(f"size (min/median/max px): width {w[0]}/{w[1]}/{w[2]}, height {h[0]}/{h[1]}/{h[2]}")
    console.print(f"unreadable files: {summary['bad_files']}"
                  + (f" (see {out / 'bad_files.csv'})" if summary["bad_files"] else ""))
    leaks = ", ".join(f"{k}: {v}" for k, v in summary["leaks"].items()) or "none"
    console.print(f"identical images: {summary['duplicate_groups']} groups; {summary['duplicates_within_split']} "
                  f"extra copies within a split; across splits (leaks) {leaks}"
                  + (f"; {summary['label_conflicts']} with conflicting labels" if summary["label_conflicts"] else ""))
    for note in summary["notes"]:
        console.print(f"note: {note}")
    t = summary["seconds"]
    console.print(f"indexed in {t['index']:.1f} s (catalog {t['catalog']:.1f} s, all {t['total']:.1f} s); "
                  f"wrote counts.csv/png, sizes.png, samples.png, augment.png, bad_files.csv, duplicates.csv, "
                  f"summary.json to {out}")
    return 0


def run_shards(args) -> int:
    from resnetlab.data.shards import write_shards

    manifest = write_shards(args.dataset, Path(args.out), shard_size=args.shard_size)
    by_split: dict[str, list[int]] = {}
    for shard in manifest["shards"].values():
        by_split.setdefault(shard["split"], []).append(shard["images"])
    parts = ", ".join(f"{split} {sum(n):,} images in {len(n)} shards" for split, n in by_split.items())
    print(f"wrote {parts} ({len(manifest['classes'])} classes) to {args.out}; train with data.dataset={args.out}")
    for note in manifest["notes"]:
        print(f"note: {note}")
    return 0
