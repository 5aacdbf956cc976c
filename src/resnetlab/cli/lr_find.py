"""`resnetlab lr-find [RECIPE] [key=value ...]`: the LR range test, a plot, the raw points, a suggestion."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  resnetlab lr-find gtsrb-resnet34-finetune
  resnetlab lr-find gtsrb-resnet34-finetune --stage 2          # after unfreezing
  resnetlab lr-find cifar10-resnet50 --start 1e-5 --end 1 --steps 80
"""


def add_parser(sub) -> None:
    p = sub.add_parser("lr-find", help="LR range test: loss against an exponentially rising learning rate",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="RECIPE|key=value", help="a recipe (first), then overrides")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate")
    p.add_argument("--steps", type=int, default=100, help="batches in the sweep at most")
    p.add_argument("--stage", type=int, default=1, help="with staged recipes: which stage's frozen groups and rates")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from resnetlab.config import load_config
    from resnetlab.errors import UserError
    from resnetlab.io import write_json
    from resnetlab.run.figures import lr_find_curves
    from resnetlab.run.prepare import prepare
    from resnetlab.train.lr_find import check_range, lr_find

    check_range(args.start, args.end, args.steps)  # before any data is read
    recipe, overrides = None, list(args.items)
    if overrides and "=" not in overrides[0]:
        recipe = overrides.pop(0)
    # the sweep runs the recipe's own model for a fixed number of steps: a time budget (and its ladder)
    # would time and choose a model first, for a run that never comes
    cfg = load_config(recipe, [*overrides, "train.time_budget="])
    if cfg.stages and not 1 <= args.stage <= len(cfg.stages):
        raise UserError(f"--stage {args.stage}: the recipe has stages 1..{len(cfg.stages)}")
    session = prepare(cfg, run_name=f"{Path(recipe).stem if recipe else 'run'}-lr-find")
    result = lr_find(session, start=args.start, end=args.end, steps=args.steps, stage=args.stage - 1)
    write_json(session.run_dir / "lr_find.json", result.to_dict())
    lr_find_curves(result, session.run_dir / "lr_find.png", window=max(1, min(20, len(result.lr) // 5)))
    end = f"stopped at {result.lr[-1]:.1e} (loss diverged)" if result.stopped_early else f"reached {result.lr[-1]:.1e}"
    print(f"swept {len(result.lr)} steps from {result.lr[0]:.1e}, {end}")
    print(f"suggested lr {result.suggested_lr:.2e}: {result.rule}; loss lowest at {result.min_loss_lr:.2e} "
          f"(a tenth of that: {result.min_loss_lr / 10:.2e})")
    print(f"wrote lr_find.png and lr_find.json to {session.run_dir}")
    return 0
