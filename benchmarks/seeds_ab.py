"""Does a change pay? A recipe trained with and without it over several seeds, scored on val and test.

    .venv/bin/python benchmarks/seeds_ab.py RECIPE [key=value ...] --b "key=value ..." [--a "key=value ..."]
        [--seeds 0 1 2] --name NAME [--out DIR]

Runs ``python -m resnetlab train RECIPE key=value ... seed=S`` for each seed with variant A's overrides
(default: none, the recipe as it is) and with variant B's, alternating A and B so that a machine's
drift over the minutes weighs on both alike. Each run chooses its checkpoint on val and scores the test
split once. Records, through benchmarks/results.py, one file: per variant the mean of the seeds' best val
top-1, test top-1 and (with train.final_tta) test TTA, each with its sample standard deviation and the
seeds' values; and B - A, paired by seed, with the standard error of that mean difference. Decide on
val; the test is reported, not chosen on. Each seed draws its own val images from the training set (the
split is seeded), so val's standard error holds the luck of that draw; every run scores the same test
images, so test's does not: a tenth of a point there can be those images' luck with every seed agreeing.

For a like-for-like comparison give a fixed length (``train.time_budget= train.epochs=N``) unless the
change's point is its speed, in which case keep the budget: the runs then differ in epochs too.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from resnetlab import run_folder as rf
from resnetlab.io import read_json

METRICS = ("best val top-1", "test top-1", "test top-1, TTA")


def main() -> int:
    from recipe_run import recipe_parser, run_figures, run_timed  # benchmarks/ is on sys.path when this script runs

    parser = recipe_parser(__doc__, "key=value overrides for both variants")
    parser.add_argument("--a", default="", help="variant A's key=value overrides, quoted as one argument")
    parser.add_argument("--b", required=True, help="variant B's key=value overrides, quoted as one argument")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--name", required=True, help="the measurement's name in benchmarks/results/")
    parser.add_argument("--out", type=Path, help="keep the run folders under this folder (default: a temporary one)")
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error("give at least 2 seeds: one run per variant has no spread to weigh a difference against")

    out = args.out or Path(tempfile.mkdtemp(prefix="resnetlab-seeds-ab-"))
    variants = {"A": shlex.split(args.a), "B": shlex.split(args.b)}
    scores: dict[str, dict[int, dict[str, tuple[float, int]]]] = {"A": {}, "B": {}}  # (value, n) by metric
    hardware = set()
    for seed in args.seeds:
        for label, extra in variants.items():
            folder = out / f"{label}-seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "resnetlab", "train", args.recipe, *args.overrides, *extra, f"seed={seed}",
                   "train.progress=false", f"train.out_dir={folder}"]
            code, wall_s, _, run = run_timed(cmd, folder)
            if code != 0 or run is None:
                print(f"seeds_ab: {label} seed {seed}: `resnetlab train` exited with {code}; nothing recorded",
                      file=sys.stderr)
                return code or 1
            scores[label][seed] = {f["metric"]: (f["value"], f["n"]) for f in run_figures(run, wall_s, None)}
            env = read_json(run / rf.ENV)
            hardware.add((env["device"], env["precision"]))
            print(f"seeds_ab: {label} seed {seed}: " + ", ".join(f"{m} {scores[label][seed][m][0]}" for m in METRICS
                                                                  if m in scores[label][seed]), flush=True)
    if len(hardware) != 1:
        print(f"seeds_ab: the runs trained on different hardware classes {sorted(hardware)}; nothing recorded",
              file=sys.stderr)
        return 1

    from results import hardware_name, record

    figures = summary(scores, args.seeds, variants)
    path = record(__file__, args.name, figures, hardware=hardware_name(*hardware.pop()))
    print(json.dumps(figures, indent=2))
    print(f"recorded: {path}")
    return 0


def summary(scores: dict, seeds: list[int], variants: dict[str, list[str]]) -> list[dict]:
    """Per metric: each variant's mean over the seeds, and B - A paired by seed with its standard error."""
    figures = []
    for metric in METRICS:
        if not all(metric in scores[v][s] for v in "AB" for s in seeds):
            continue
        n_images = scores["A"][seeds[0]][metric][1]
        for label in "AB":
            values = [scores[label][s][metric][0] for s in seeds]
            figures.append({"metric": f"{metric}, {label}", "value": round(statistics.mean(values), 3), "unit": "%",
                            "n": len(seeds),
                            "how": f"mean of {len(seeds)} runs (seeds {seeds}: {values}; sd "
                                   f"{statistics.stdev(values):.3f}), each over n={n_images:,} images; "
                                   f"{label}: {' '.join(variants[label]) or 'the recipe as it is'}"})
        diffs = [scores["B"][s][metric][0] - scores["A"][s][metric][0] for s in seeds]
        se = statistics.stdev(diffs) / len(diffs) ** 0.5
        figures.append({"metric": f"{metric}, B - A", "value": round(statistics.mean(diffs), 3), "unit": "points",
                        "n": len(seeds),
                        "how": f"paired by seed: {[round(d, 2) for d in diffs]}; standard error {se:.3f}"})
    return figures


if __name__ == "__main__":
    sys.exit(main())
