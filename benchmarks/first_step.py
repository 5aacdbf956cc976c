"""The second run of a time-budget recipe: seconds from the command's start to the end of its first
training step, when the budget plans from the probe cache instead of timing the rungs again.

    PYTHONPATH=src .venv/bin/python benchmarks/first_step.py [RECIPE key=value ...] [--runs 3] [--record]

Each run is a fresh process that does what `resnetlab train RECIPE ...` does (load_config, prepare,
fit), stopped by a callback at the end of its first optimiser step; the figure is the wall time from
just before the process is started (interpreter start and `import resnetlab` included) to that step's
end. Every run shares one new folder for data.cache_dir (the decoded cache and the probe cache), so:
1. the first run times each rung (the probe) and caches the timings, and the data where it caches;
   while other processes keep the CPUs busy nothing is cached, and it is run again (at most --warm-up
   times in all);
2. then --runs runs more of the same command, each planning from the cache: their median is the figure.
The default recipe is fashion-mnist-fast (Fashion-MNIST, a 9-minute budget over a two-rung ladder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = ["fashion-mnist-fast"]

CHILD = """
import json, sys, time
from resnetlab import fit, load_config, prepare
from resnetlab.train.loop import StopTraining

out = {}
s = prepare(load_config(sys.argv[1], sys.argv[2:]), run_name="first-step")
out["prepared"] = time.time()

def first_step(session, info):
    out["first_step_end"] = time.time()
    raise StopTraining("first_step benchmark: one step is enough")

try:
    fit(s, callbacks={"on_batch_end": [first_step]})
except StopTraining:
    pass
rows = [r for r in s.plan.rungs if r.get("timing")]
print(json.dumps({**out, "timing": s.plan.timing, "rungs": [[r["timing"], bool(r["cache_file"])] for r in rows],
                  "notes": [r["cache_note"] for r in rows if r["cache_note"]]}))
"""


def run(argv: list[str]) -> dict:
    """One run in a fresh process: its figures, times in s from just before the process started."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "prepared_s": result["prepared"] - start, "first_step_s": result["first_step_end"] - start,
            "cached_all": all(stored for _, stored in result["rungs"])}


def show(label: str, r: dict) -> None:
    print(f"{label:<16} first step done {r['first_step_s']:6.2f} s after the command's start (prepare done at "
          f"{r['prepared_s']:.2f} s); rung timings: {r['timing']}{'; ' if r['notes'] else ''}{'; '.join(r['notes'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="*", help="a recipe and key=value overrides (default: fashion-mnist-fast)")
    parser.add_argument("--runs", type=int, default=3, help="runs that plan from the cache (the median is kept)")
    parser.add_argument("--warm-up", type=int, default=3, help="first runs at most, until the timings are cached")
    parser.add_argument("--record", action="store_true", help="also write the figures to benchmarks/results/")
    args = parser.parse_args()
    items = args.items or DEFAULT
    work = Path(tempfile.mkdtemp(prefix="resnetlab-first-step-"))
    argv = [*items, f"data.cache_dir={work / 'cache'}", f"train.out_dir={work / 'runs'}", "train.progress=false"]
    try:
        for i in range(args.warm_up):
            first = run(argv)
            show(f"probe run {i + 1}", first)
            if first["cached_all"]:
                break
        else:
            print("the rungs' timings were not cached (the CPUs were busy while they were timed): run it again on a "
                  "quieter machine", file=sys.stderr)
            return 1
        again = [run(argv) for _ in range(args.runs)]
        for i, r in enumerate(again):
            show(f"cached run {i + 1}", r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if any(r["timing"] != "cached" for r in again):
        print("a run after the first probed again: its figure is not the cached start", file=sys.stderr)
        return 1
    times = sorted(r["first_step_s"] for r in again)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    figures = [{"metric": "second run: command start to the end of the first step", "unit": "s", "n": len(times),
                "value": round(statistics.median(times), 2),
                "how": f"median of {len(times)} runs ({times[0]:.2f}-{times[-1]:.2f} s) planning from the probe cache; "
                       f"from just before the process starts, imports included; load average {load}"},
               {"metric": "first run: command start to the end of the first step", "unit": "s", "n": 1,
                "value": round(first["first_step_s"], 2), "how": "the run that timed the rungs (the probe)"}]
    if args.record:
        from results import record  # benchmarks/ is on sys.path when this script runs

        print(f"recorded: {record(__file__, '-'.join(items), figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
