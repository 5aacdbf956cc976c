"""`resnetlab tune RECIPE --trials N [--space space.yaml] [--study DIR]`: an Optuna study over config keys."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  resnetlab tune cifar10-fast data.val_fraction=0.1 train.epochs=5 --trials 20
  resnetlab tune cifar10-fast --space space.yaml --study studies/cifar --trials 40   # again to resume
  resnetlab train studies/cifar/best.yaml                                              # the winner

space.yaml (config keys; a typo names the nearest key):
  optim.lr: log [1e-3, 1]
  augment.rotation: [0, 20]
  model.name: [resnet9, cifar_resnet18]
"""


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="search hyper-parameters with Optuna (TPE + pruning) on validation top-1",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="+", metavar="RECIPE|key=value", help="a recipe (first), then fixed overrides")
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (a resume counts "
                                                          "the ones already done)")
    p.add_argument("--space", metavar="YAML", help="search space in config keys (default: lr, weight decay, "
                                                   "label smoothing around the recipe's values)")
    p.add_argument("--study", metavar="DIR", help="study folder (default: studies/<recipe>); give it again to resume")
    p.add_argument("--pruner", default="median", choices=["median", "halving", "none"])
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from resnetlab.errors import UserError
    from resnetlab.tune.study import run_study

    recipe, overrides = args.items[0], list(args.items[1:])
    if "=" in recipe:
        raise UserError("tune needs a recipe first (a shipped name or a YAML file), then key=value overrides")
    study = Path(args.study) if args.study else Path("studies") / Path(recipe).stem
    run_study(recipe, overrides, trials=args.trials, study_dir=study, space=Path(args.space) if args.space else None,
              pruner=args.pruner)
    return 0
