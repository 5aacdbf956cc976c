"""Start-up: seconds from a fresh interpreter to the end of the first training step, cold and warm.

    .venv/bin/python benchmarks/startup.py [--data DIR] [--recipe cifar10-fast] [key=value ...]

Runs the recipe three times in fresh processes, each stopped after its first step, against a decoded
cache folder of its own (deleted first):
1. cold: the cache is empty, every image is decoded (the first run on a machine);
2. warm: the same run again;
3. warm, another seed and another val split: nothing is decoded again either.
Each line is the wall time from interpreter start (before `import resnetlab`) to the end of the
first optimiser step, and how much of it was `prepare` (catalog, decode or cache read, model).
The default data is the whole CIFAR-10 training set as JPEGs (50,000 files) in ../shared/data.
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

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import time
t0 = time.perf_counter()
import json, sys
from resnetlab import fit, load_config, prepare
from resnetlab.train.loop import StopTraining

cfg = load_config(sys.argv[1], sys.argv[2:])
t_import = time.perf_counter() - t0
s = prepare(cfg, run_name="startup")
t_prepare = time.perf_counter() - t0 - t_import
out = {}

def first_step(session, info):
    out["first_step_end"] = time.perf_counter() - t0
    raise StopTraining("startup benchmark: one step is enough")

try:
    fit(s, callbacks={"on_batch_end": [first_step]})
except StopTraining:
    pass
print(json.dumps({"import_s": t_import, "prepare_s": t_prepare, **out, "notes": s.data.notes}))
"""


def run(recipe: str, overrides: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, recipe, *overrides], capture_output=True, text=True,
                          cwd=REPO)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg-full"))
    parser.add_argument("--recipe", default="cifar10-fast")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--record", action="store_true", help="also write the figures to benchmarks/results/")
    args = parser.parse_args()
    figures = []
    work = Path(tempfile.mkdtemp(prefix="resnetlab-startup-"))
    common = [f"data.dataset={args.data}", f"data.cache_dir={work / 'cache'}", f"train.out_dir={work / 'runs'}",
              "train.time_budget=", "train.epochs=1", "train.progress=false", "train.report=false",
              "train.final_test=false", *args.overrides]
    runs = [("cold cache", []), ("warm cache", []),
            ("warm cache, seed 1, val_count 2000", ["seed=1", "data.val_count=2000"])]
    try:
        for label, extra in runs:
            r = run(args.recipe, common + extra)
            print(f"{label:<36} first step done {r['first_step_end']:6.2f} s after start  "
                  f"(imports {r['import_s']:.2f} s, prepare {r['prepare_s']:.2f} s; "
                  f"whole process {r['process_s']:.2f} s)")
            print(f"{'':<36} {[n for n in r['notes'] if 'decoded cache' in n]}")
            figures += [{"metric": f"{label}: first step done", "value": round(r["first_step_end"], 2), "unit": "s",
                         "n": 1, "how": "from interpreter start, `import resnetlab` included"},
                        {"metric": f"{label}: prepare", "value": round(r["prepare_s"], 2), "unit": "s", "n": 1,
                         "how": "catalog, decode or cache read, model"}]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.record:
        from results import record  # benchmarks/ is on sys.path when this script runs

        print(f"recorded: {record(__file__, args.recipe + ''.join(f'-{o}' for o in args.overrides), figures)}")


if __name__ == "__main__":
    main()
