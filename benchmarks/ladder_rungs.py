"""Which rung of a recipe's ladder wins on a machine class: train each rung for the epochs that class
gives it, and score each once on the test split.

    .venv/bin/python benchmarks/ladder_rungs.py RECIPE --epochs 4,8,13 [key=value ...] [--rungs 0,1,2]

Rung i trains for the i-th number of ``--epochs`` (whole epochs, no time budget, the recipe's own
schedule laid over them), so a class whose budget gives the rungs 4, 8 and 13 epochs is compared on
any machine: ``benchmarks/ladder_table.py RECIPE --all`` prints what a machine gives them. The
checkpoint is chosen on validation as in every run; the test split is scored once. One JSON line a rung
goes to stdout (and to --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from resnetlab.config import evolve, load_config, rung_config
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--epochs", required=True, help="comma-separated: epochs for rung 0, 1, ...")
    parser.add_argument("--rungs", help="comma-separated rung indices to train (default: one per --epochs value)")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args()
    epochs = [int(e) for e in args.epochs.split(",")]
    rungs = [int(r) for r in args.rungs.split(",")] if args.rungs else list(range(len(epochs)))
    base = load_config(args.recipe, args.overrides)
    tmp = Path(tempfile.mkdtemp(prefix="rungs-"))
    for i in rungs:
        rung = base.train.ladder[i]
        cfg = evolve(rung_config(base, i), {"train.time_budget": "", "train.epochs": epochs[i],
                                            "train.out_dir": str(tmp), "train.progress": False,
                                            "train.name": f"rung{i}"})
        start = time.monotonic()
        s = prepare(cfg, run_name=f"rung{i}")
        test = fit(s).get("test", {})
        row = {"recipe": args.recipe, "overrides": args.overrides, "rung": i, "set": rung, "epochs": epochs[i],
               "precision": s.precision, "test_top1": test.get("top1"), "n": test.get("n"),
               "best_val_top1": s.state.best_score, "seconds": round(time.monotonic() - start, 1)}
        print(json.dumps(row), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
