"""The time budget's ladder as this machine times it: each rung's step times and the epochs it gets.

    .venv/bin/python benchmarks/ladder_table.py RECIPE [key=value ...] [--all]

Prepares the run (data, then the timing of the rungs) without training, prints the hardware class,
the table and the plan, and deletes the run folder. ``--all`` times every rung, each alone with its
own clock (train.ladder_rung pins it; the run would stop at the first that gets
train.ladder_min_epochs), and says which rung the recipe's rule picks from the full table. Set
RESNETLAB_CPU_BF16=0 to see the fp32 path on a CPU that has bf16.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from resnetlab.budget.plan import pick_rung
from resnetlab.config import load_config
from resnetlab.errors import UserError
from resnetlab.run.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--all", action="store_true", help="time every rung in full, not only up to the chosen one")
    parser.add_argument("--record", action="store_true", help="also write the figures to benchmarks/results/")
    args = parser.parse_intermixed_args()
    cfg = load_config(args.recipe, args.overrides)
    need, ladder = cfg.train.ladder_min_epochs, cfg.train.ladder
    if not args.all:
        plan = _plan(args.recipe, args.overrides)
        rows = plan.rungs
    else:  # each rung alone, pinned
        plan, rows = None, []
        for i, rung in enumerate(ladder or [{}]):
            try:
                alone = _plan(args.recipe, [*args.overrides, f"train.ladder_rung={i}"])
            except UserError as e:  # too slow for one epoch, or out of memory: the row says so
                rows.append({"rung": i, "set": rung, "step_s": None, "note": str(e)})
                continue
            plan = plan or alone
            rows.append({**alone.rungs[i], "rung": i, "set": rung})
        if plan is None:
            raise SystemExit(f"no rung could be planned: {rows[0]['note']}")
        plan.rungs, plan.rung = rows, None
    for line in plan.table():
        print(line)
    fitting = {r["rung"]: r["epochs"] for r in rows if r.get("epochs")}
    picks = pick_rung(fitting, need) if fitting else None
    print(f"the recipe's rule (first rung with >= {need} epochs, else the most) picks rung {picks}")
    if not args.all:
        print(plan.line())
    keys = ("rung", "set", "step_s", "epoch_s", "epochs", "steps", "others_cpu")
    print(json.dumps({"hardware": plan.hardware, "rule_picks": picks,
                      "rungs": [{k: r.get(k) for k in keys} for r in rows]}))
    if args.record:
        _record(args, cfg, rows, picks)


def _record(args, cfg, rows: list[dict], picks: int | None) -> None:
    """--record: each timed rung's step time by size and the epochs it gets, in benchmarks/results/."""
    from resnetlab.device import resolve_precision, select_device
    from results import hardware_name, record  # benchmarks/ is on sys.path when this script runs

    figures = []
    for r in rows:
        if r.get("step_s") is None:
            continue
        rung = ", ".join(f"{k}={v}" for k, v in r["set"].items()) or "the config as it is"
        how = "timed to the probe's rule" + (", alone" if args.all else "")
        figures += [{"metric": f"rung {r['rung']} step at {px} px", "value": round(1e3 * s, 1), "unit": "ms",
                     "n": r["timed_steps"][px], "rung": rung, "how": f"mean of the steps, the slowest left out; {how}"}
                    for px, s in sorted(r["step_s"].items())]
        figures.append({"metric": f"rung {r['rung']} epochs in the budget", "value": r["epochs"], "unit": "epochs",
                        "n": 1, "rung": rung, "how": f"the plan; the rule picks rung {picks}"})
    device = select_device(cfg.train.device)
    hardware = hardware_name(device, resolve_precision(cfg.train.precision, device))
    name = Path(args.recipe).stem + ("-all" if args.all else "")
    print(f"recorded: {record(__file__, name, figures, hardware=hardware)}")


def _plan(recipe: str, overrides: list[str]):
    """The plan the run would make, its data loaded and its rungs timed, without training."""
    out = Path(tempfile.mkdtemp(prefix="ladder-"))
    try:
        return prepare(load_config(recipe, [*overrides, f"train.out_dir={out}", "train.progress=false"]),
                       run_name=Path(recipe).stem).plan
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
