"""`resnetlab runs [DIR]`: one line per run folder, sortable."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  resnetlab runs                         # runs/
  resnetlab runs runs --sort best_val_top1 --desc
  resnetlab runs runs --sort best_val_map --desc   # multi-label runs: macro mAP
  resnetlab runs studies/cifar --json    # a study's trials too
"""


def add_parser(sub) -> None:
    from resnetlab.evaluate.runs import SORT_KEYS

    p = sub.add_parser("runs", help="list run folders: recipe, model, epochs, best val / test top-1 "
                                    "(mAP if multi-label), time, status",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", default="runs", help="where the runs are (default: runs)")
    p.add_argument("--sort", default="name", choices=SORT_KEYS, help="column to sort by")
    p.add_argument("--desc", action="store_true", help="largest first")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from resnetlab.evaluate.report import pct
    from resnetlab.evaluate.runs import list_runs

    rows = list_runs(Path(args.folder), sort=args.sort, descending=args.desc)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    table = Table(title=f"{len(rows)} runs in {args.folder}")
    multi = not all(r.task.one_class for r in rows)  # mAP columns only where a multi-label run is listed
    scores = ["best val top-1", "test top-1"] + (["best val mAP", "test mAP"] if multi else [])
    for name in ("run", "recipe", "model", "data set", "epochs", *scores, "train time", "status"):
        table.add_column(name, justify="right" if name in ("epochs", *scores, "train time") else "left")
    for r in rows:
        status = r.status + (f" ({r.reason[:60]})" if r.reason and r.status != "finished" else "")
        n = f" (n={r.test_n})" if r.test_n else ""
        cells = [pct(r.best_val_top1), pct(r.test_top1) + (n if r.test_top1 is not None else "")]
        if multi:
            cells += [pct(r.best_val_map), pct(r.test_map) + (n if r.test_map is not None else "")]
        table.add_row(r.name, r.recipe, r.model, Path(r.dataset).name or r.dataset,
                      f"{r.epochs_done}/{r.epochs_planned}", *cells, f"{r.seconds:.0f} s", status)
    Console(soft_wrap=True, width=200).print(table)
    return 0
