"""`resnetlab train [RECIPE] [key=value ...]` and `resnetlab train --resume RUN [key=value ...]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from resnetlab.config import all_keys, load_config
from resnetlab.errors import UserError

EXAMPLES = """examples:
  resnetlab train fashion-mnist-fast
  resnetlab train fashion-mnist-fast train.epochs=3 optim.lr=0.1
  resnetlab train data.dataset=path/to/folders model.name=cifar_resnet18 data.image_size=32
  resnetlab train --resume runs/fashion-mnist-fast-20261122-101500 optim.lr=0.01
"""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from a recipe and key=value overrides", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="RECIPE|key=value",
                   help="a recipe name or YAML file (first), then overrides like optim.lr=0.05")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder where it stopped")
    p.add_argument("--retrain-on-all", action="store_true",
                   help="then train again, same settings, on train + val (as the fastai GTSRB tutorial does "
                        "before testing); written to <run>-all")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.session import prepare
    from resnetlab.train import Preempted, fit

    if args.help_config:
        from resnetlab.config import Config

        cfg = Config().to_dict()
        for key in all_keys():
            section, _, leaf = key.partition(".")
            print(f"{key} = {cfg[section][leaf] if leaf else cfg[section]}")
        return 0
    recipe, overrides = None, list(args.items)
    if overrides and "=" not in overrides[0]:
        recipe = overrides.pop(0)
    if args.resume:
        if recipe:
            raise UserError("--resume takes its recipe from the run folder; give only key=value overrides")
        session = prepare(None, run_name="", resume=Path(args.resume), overrides=overrides)
    else:
        cfg = load_config(recipe, overrides)
        name = Path(recipe).stem if recipe else "run"
        session = prepare(cfg, run_name=name)
    try:
        fit(session)
        _report(session)
        if args.retrain_on_all:
            final = prepare(_on_all(session.run_dir), run_name="")
            fit(final)
            _report(final)
    except Preempted as e:
        if session.dist.main:  # every rank stops; one says so
            print(f"resnetlab train: {e}", file=sys.stderr)
        return Preempted.exit_code
    return 0


def _report(session) -> None:
    """Evaluate the test split with figures (calibrated on val) and write report.html: rank 0 only."""
    from resnetlab.evaluation import Options, evaluate_split, split_images
    from resnetlab.predict import Predictor
    from resnetlab.report import build_report

    if not session.cfg.train.report or not session.dist.main:
        return
    splits = session.data.splits
    if "test" in splits:
        predictor = Predictor.load(session.run_dir, device=str(session.device))
        val = split_images(splits["val"], predictor) if "val" in splits else None
        images, labels = split_images(splits["test"], predictor)
        evaluate_split(session.run_dir, predictor, "test", images, labels,
                       Options(batch_size=session.cfg.train.eval_batch_size), val=val)
    print(f"report: {build_report(session.run_dir)}")


def _on_all(run: Path):
    """The finished run's settings and images, with its validation images moved into training."""
    from resnetlab.runs import read_run_config

    cfg = read_run_config(run)
    if not any(line.endswith(",val") for line in (run / "split.csv").read_text().splitlines()):
        raise UserError(f"{run} has no validation split to add to training: --retrain-on-all needs one")
    cfg.data.split_file, cfg.data.merge_val = str(run / "split.csv"), True
    cfg.train.name = f"{run.name}-all"
    print(f"retraining on train + val: {cfg.train.name}")
    return cfg
