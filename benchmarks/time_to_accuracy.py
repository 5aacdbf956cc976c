"""Accuracy against wall-clock time: trains a recipe once, scoring the test split after each epoch.

    .venv/bin/python benchmarks/time_to_accuracy.py fashion-mnist-3min [key=value ...] [--out DIR] [--record]

The clock starts when prepare() begins (data loading counts) and stops after the run's own
end (final test and report). Scoring the test split after every epoch is the benchmark's, not
the recipe's: it runs outside the clock (its seconds are taken off, and off a time budget's
clock too, so the plan is the one a plain run makes). Those per-epoch points use the weights
of that moment (EMA weights when on); the final point is the recipe's own result, the
checkpoint chosen on validation, scored once. Writes DIR/<recipe>.json and DIR/time_to_accuracy.png
with every JSON in DIR on one plot (DIR: runs/time_to_accuracy, with the run folders); --record also
writes the figures to benchmarks/results/ (benchmarks/results.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from resnetlab.config import load_config
from resnetlab.io import atomic_write_text
from resnetlab.plotting import save_figure
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from resnetlab.train.loop import run_epochs, score_split


def run(recipe: str, overrides: list[str], out: Path) -> dict:
    cfg = load_config(recipe, [*overrides, f"train.out_dir={out / 'runs'}", "train.progress=false"])
    s = prepare(cfg, run_name=Path(recipe).stem)
    points = []

    def score(session, record):
        clock = session.clock.elapsed()
        if "test" in session.loaders:
            with session.clock.paused():  # the run's clock, and a time budget's, skip the benchmark's scoring
                model = session.ema.module if session.ema is not None else None
                scored = score_split(session, "test", model=model)
            top1 = scored["top1"]
            points.append({"epoch": record["epoch"], "seconds": round(clock, 2), "test_top1": top1, "n": scored["n"]})
            print(f"  [benchmark] epoch {record['epoch']}: {clock:.0f} s, test top-1 {100 * top1:.2f}%", flush=True)

    result = fit(s, callbacks={"on_epoch_end": [score]})
    seconds = s.clock.elapsed()
    test = result.get("test", {})
    record = {"recipe": recipe, "overrides": overrides, "epochs": run_epochs(s),
              "steps_per_epoch": len(s.loaders["train"]), "time_budget": s.cfg.train.time_budget,
              "seconds": round(seconds, 2), "final_test_top1": test.get("top1"), "final_n": test.get("n"),
              "final_checkpoint": test.get("checkpoint"), "final_tta": test.get("tta"), "points": points,
              "run_dir": str(s.run_dir), "device": str(s.device), "precision": s.precision}
    return record


def record_figures(record: dict, name: str) -> Path:
    """--record: the final test top-1 and the run's seconds, and each epoch's point, in benchmarks/results/."""
    from results import hardware_name  # benchmarks/ is on sys.path when this script runs
    from results import record as write

    figures = [{"metric": "wall time, prepare() to report", "value": record["seconds"], "unit": "s", "n": 1,
                "how": "the benchmark's per-epoch test scoring taken off the clock"}]
    if record["final_test_top1"] is not None:
        figures.insert(0, {"metric": "test top-1", "value": round(100 * record["final_test_top1"], 2), "unit": "%",
                           "n": record["final_n"], "how": f"{record['final_checkpoint']}, scored once"})
    if tta := record.get("final_tta"):
        figures.insert(1, {"metric": "test top-1, TTA", "value": round(100 * tta["top1"], 2), "unit": "%",
                           "n": record["final_n"], "how": f"{tta['views']} views ({tta.get('reduce', 'mean')}); "
                                                          f"{record['final_checkpoint']}, scored once"})
    figures += [{"metric": f"test top-1 after epoch {p['epoch']}", "value": round(100 * p["test_top1"], 2),
                 "unit": "%", "n": p["n"], "seconds": p["seconds"],
                 "how": "the weights of that moment (EMA weights when on), outside the clock"}
                for p in record["points"]]
    return write(__file__, name, figures, hardware=hardware_name(record["device"], record["precision"]))


def plot(out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        xs = [p["seconds"] / 60 for p in r["points"]]
        ax.plot(xs, [100 * p["test_top1"] for p in r["points"]], marker="o", ms=3, label=path.stem)
        if r.get("final_test_top1") is not None:
            ax.scatter([r["seconds"] / 60], [100 * r["final_test_top1"]], marker="*", s=80)
    ax.set_xlabel("wall clock, minutes (data loading and the final test included)")
    ax.set_ylabel("test top-1, %")
    ax.set_title("time to accuracy (star: the run's final model, chosen on val)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    target = out / "time_to_accuracy.png"
    save_figure(fig, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="key=value")
    parser.add_argument("--out", type=Path, default=Path("runs/time_to_accuracy"))
    parser.add_argument("--name", help="the JSON's name (default: the recipe's)")
    parser.add_argument("--record", action="store_true", help="also write the figures to benchmarks/results/")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    record = run(args.recipe, args.overrides, args.out)
    path = args.out / f"{args.name or Path(args.recipe).stem}.json"
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    final = record["final_test_top1"]
    print(f"{args.recipe}: {record['seconds']:.0f} s in all, final test top-1 "
          f"{'-' if final is None else f'{100 * final:.2f}%'} (n={record['final_n']}); {path}; {plot(args.out)}")
    if args.record:
        print(f"recorded: {record_figures(record, args.name or Path(args.recipe).stem)}")


if __name__ == "__main__":
    main()
