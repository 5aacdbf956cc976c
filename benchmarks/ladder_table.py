"""The time budget's ladder as this machine times it: each rung's step times and the epochs it gets.

    .venv/bin/python benchmarks/ladder_table.py RECIPE [key=value ...] [--all]

Prepares the run (data, then the timing of the rungs) without training, prints the hardware class,
the table and the plan, and deletes the run folder. ``--all`` times every rung (the run would stop
at the first that gets train.ladder_min_epochs) and says which rung the recipe's rule picks from the
full table. Set RESNETLAB_CPU_BF16=0 to see the fp32 path on a CPU that has bf16.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from resnetlab.config import load_config
from resnetlab.train.budget import pick_rung
from resnetlab.train.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--all", action="store_true", help="time every rung, not only up to the chosen one")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="ladder-"))
    extra = [f"train.out_dir={out}", "train.progress=false"]
    need = load_config(args.recipe, args.overrides).train.ladder_min_epochs
    if args.all:
        extra.append("train.ladder_min_epochs=1000000")
    s = prepare(load_config(args.recipe, [*args.overrides, *extra]), run_name=Path(args.recipe).stem)
    plan = s.plan
    for line in plan.table():
        print(line)
    picks = pick_rung({r["rung"]: r["epochs"] for r in plan.rungs if r.get("epochs")}, need)
    print(f"the recipe's rule (first rung with >= {need} epochs, else the most) picks rung {picks}")
    print(plan.line())
    print(json.dumps({"hardware": plan.hardware, "rule_picks": picks,
                      "rungs": [{k: r.get(k) for k in ("rung", "set", "step_s", "epoch_s", "epochs", "steps")}
                                for r in plan.rungs]}))
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
