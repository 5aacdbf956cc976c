"""A recipe's whole run, as a user types it, measured and recorded in benchmarks/results/.

    .venv/bin/python benchmarks/recipe_run.py RECIPE [key=value ...] [--name NAME] [--out DIR]

Runs ``python -m resnetlab train RECIPE key=value ... train.out_dir=DIR`` in a subprocess (DIR: a
temporary folder, deleted afterwards, unless --out keeps the run there) and records, through
benchmarks/results.py, one file with:
- test top-1 with its n (the checkpoint the run chose on val), and with TTA when train.final_tta > 1;
  for a multi-label run, test mAP (macro) instead;
- the best val top-1 (mAP) of any epoch, with its n;
- the epochs trained (steps / steps in the first epoch: a time budget may end the last one early);
- the whole command's wall time (time.monotonic() around the subprocess: start-up, data, training,
  test and report);
- the wall time from the command's start to the end of the first epoch. metrics.jsonl keeps each
  epoch's training-step seconds but no time since the start, so this is taken by watching the run
  folder: the moment its metrics.jsonl first holds a line (written after the epoch's validation,
  before its checkpoint), polled every POLL_S;
- with train.time_budget: the whole command's wall time and the run's own clock (budget.json) as
  shares of the budget, and the ladder's rung. ``--busy-first S`` runs a CPU-bound process beside the
  command for its first S seconds (a job sharing the machine while the rungs are timed).
The hardware class is the run's own (env.json: its device and precision). Nothing is recorded when the
run fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resnetlab import run_folder as rf
from resnetlab.io import read_json

POLL_S = 0.1  # s between looks at the run folder while the command runs


def recipe_parser(doc: str, overrides: str) -> argparse.ArgumentParser:
    """A benchmark's command line that takes a recipe and its key=value overrides, its help from ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="a recipe name or YAML file, as `resnetlab train` takes it")
    parser.add_argument("overrides", nargs="*", help=overrides)
    return parser


def main() -> int:
    parser = recipe_parser(__doc__, "key=value overrides, passed on to `resnetlab train`")
    parser.add_argument("--name", help="the measurement's name in benchmarks/results/ (default: the recipe's)")
    parser.add_argument("--out", type=Path, help="keep the run folder under this folder (default: a temporary one)")
    parser.add_argument("--results", type=Path, help="where the result file goes (default: benchmarks/results/)")
    parser.add_argument("--busy-first", type=float, default=0.0, metavar="S",
                        help="run one CPU-bound process beside the command for its first S seconds")
    parser.add_argument("--timing-only", action="store_true",
                        help="record the wall times alone: for a run whose scores mean nothing (e.g. stand-in "
                             "pretrained weights where the real ones cannot be downloaded)")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="resnetlab-recipe-run-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        cmd = [sys.executable, "-m", "resnetlab", "train", args.recipe, *args.overrides, f"train.out_dir={out}"]
        busy = _busy(args.busy_first) if args.busy_first else None
        code, wall_s, first_epoch_s, run = run_timed(cmd, out)
        if busy is not None:
            busy.kill()
        if code != 0:
            print(f"recipe_run: `resnetlab train` exited with {code}; nothing recorded", file=sys.stderr)
            return code or 1
        if run is None:
            print(f"recipe_run: no run folder under {out}; nothing recorded", file=sys.stderr)
            return 1
        figures = run_figures(run, wall_s, first_epoch_s) + budget_figures(run, wall_s, args.busy_first)
        if args.timing_only:
            figures = [f for f in figures if f["unit"] == "s"]
        env = read_json(run / rf.ENV)

        from results import hardware_name, record  # benchmarks/ is on sys.path when this script runs

        path = record(__file__, args.name or Path(args.recipe).stem, figures,
                      hardware=hardware_name(env["device"], env["precision"]), out_dir=args.results)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    print(f"recorded: {path}")
    return 0


def run_timed(cmd: list[str], out: Path) -> tuple[int, float, float | None, Path | None]:
    """(exit code, s of the whole command, s to the first epoch's end or None, the new run folder)."""
    before = {p.name for p in out.iterdir()}
    start = time.monotonic()
    proc = subprocess.Popen(cmd)
    first_epoch_s = None
    while True:
        try:
            proc.wait(timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            if first_epoch_s is None and _first_epoch_done(out, before):
                first_epoch_s = time.monotonic() - start
                proc.wait()
                break
    wall_s = time.monotonic() - start
    runs = [p for p in out.iterdir() if p.name not in before and (p / rf.CONFIG).is_file()]
    return proc.returncode, wall_s, first_epoch_s, (max(runs, key=lambda p: p.stat().st_mtime) if runs else None)


def _first_epoch_done(out: Path, before: set[str]) -> bool:
    for p in out.iterdir():
        if p.name not in before:
            try:
                if (p / rf.METRICS).read_text().strip():
                    return True
            except OSError:  # not written yet
                pass
    return False


def run_figures(run: Path, wall_s: float, first_epoch_s: float | None) -> list[dict]:
    """The figures of a finished run folder, each with its n."""
    sizes = read_json(run / rf.DATA).get("sizes", {})
    history = [json.loads(line) for line in (run / rf.METRICS).read_text().splitlines() if line.strip()]
    test = rf.read_optional_json(run, rf.eval_name("test"))
    figures = []
    if test is not None:
        chosen = (f"{test.get('checkpoint', '')}, chosen on val (n={sizes['val']:,})" if sizes.get("val")
                  else f"{test.get('checkpoint', '')}, no val split to choose on")
        key, metric = ("top1", "test top-1") if "top1" in test else ("map_macro", "test mAP (macro)")
        figures.append({"metric": metric, "value": _pct(test[key]), "unit": "%", "n": test["n"], "how": chosen})
        if "tta" in test:
            tta = test["tta"]
            figures.append({"metric": f"{metric}, TTA", "value": _pct(tta[key]), "unit": "%", "n": test["n"],
                            "how": f"{tta['views']} views ({tta.get('reduce', 'mean')}); {chosen}"})
    val_key = "val_top1" if any("val_top1" in h for h in history) else "val_map"
    val = [h[val_key] for h in history if val_key in h]
    if val and sizes.get("val"):
        figures.append({"metric": "best val top-1" if val_key == "val_top1" else "best val mAP (macro)",
                        "value": _pct(max(val)), "unit": "%", "n": sizes["val"],
                        "how": "the best epoch's val score (the EMA weights' when train.ema_decay is set)"})
    if history:
        figures.append({"metric": "epochs trained", "value": round(history[-1]["step"] / history[0]["step"], 2),
                        "unit": "epochs", "n": 1, "how": "steps trained / steps in the first epoch"})
    figures.append({"metric": "wall time, whole command", "value": round(wall_s, 1), "unit": "s", "n": 1,
                    "how": "time.monotonic() around `python -m resnetlab train ...`: start-up to report"})
    if first_epoch_s is not None:
        figures.append({"metric": "wall time to the end of the first epoch", "value": round(first_epoch_s, 1),
                        "unit": "s", "n": 1,
                        "how": f"from the command's start until metrics.jsonl held epoch 1 (after its "
                               f"validation), polled every {POLL_S} s"})
    return figures


def budget_figures(run: Path, wall_s: float, busy_s: float) -> list[dict]:
    """A time budget run: how close to its budget it ended, and the rung its ladder chose."""
    plan = rf.read_optional_json(run, rf.BUDGET)
    if plan is None:
        return []
    beside = f"; a CPU-bound process ran beside it for its first {busy_s:g} s" if busy_s else ""
    figures = [{"metric": "whole command / train.time_budget", "value": _pct(wall_s / plan["budget_s"]), "unit": "%",
                "n": 1, "how": f"wall time around the command over the budget ({plan['budget_s']:g} s){beside}"},
               {"metric": "the run's own clock / train.time_budget", "value": _pct(plan["actual_s"] / plan["budget_s"]),
                "unit": "%", "n": 1,
                "how": "budget.json actual_s: the train command's start to the report, what the budget counts"}]
    if plan.get("rung") is not None:
        chosen = plan["rungs"][plan["rung"]]
        figures.append({"metric": "ladder rung chosen", "value": plan["rung"], "unit": "rung", "n": 1,
                        "how": f"{chosen['set'] or 'the config as it is'}: {chosen['epochs']} epochs planned; "
                               f"{plan['rule']}; other processes' CPU share while timed: "
                               f"{chosen.get('others_cpu')}"})
    correction = plan.get("correction") or {}
    if correction:
        steps = correction.get("max_steps") or correction["planned_steps"]
        figures.append({"metric": "length correction", "value": steps, "unit": "steps", "n": 1,
                        "how": correction["line"]})
    if late := plan.get("late_corrections"):
        figures.append({"metric": "late moves of the end", "value": len(late), "unit": "moves", "n": 1,
                        "how": "; ".join(f"after step {m['after_step']}: {m['planned_steps']} -> {m['max_steps']} "
                                         f"steps (pace {m['pace']:.2f}x)" for m in late)})
    return figures


def _busy(seconds: float) -> subprocess.Popen:
    """One process that keeps a CPU busy for ``seconds``."""
    loop = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", loop])


def _pct(fraction: float) -> float:
    return round(100 * fraction, 2)


if __name__ == "__main__":
    sys.exit(main())
