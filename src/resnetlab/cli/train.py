"""`resnetlab train [RECIPE] [key=value ...]` and `resnetlab train --resume RUN [key=value ...]`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from resnetlab.config import all_keys, load_config, resolve_key
from resnetlab.errors import UserError

PHOTOS_RECIPE = "photos"  # what `resnetlab train path/to/photos` trains: a pretrained ResNet fine-tuned

EXAMPLES = """examples:
  resnetlab train path/to/photos                  # class folders or a CSV: fine-tunes a pretrained ResNet-50
  resnetlab train path/to/photos model.name=resnet18 model.weights=IMAGENET1K_V1
  resnetlab train fashion-mnist-fast
  resnetlab train fashion-mnist-fast train.epochs=3 optim.lr=0.1
  resnetlab train data.dataset=path/to/folders model.name=cifar_resnet18 data.image_size=32
  resnetlab train --resume runs/fashion-mnist-fast-20261122-101500 optim.lr=0.01
  resnetlab train --resume runs/cifar10-preact-ctrlc-exp1-20261122-101500 --from-epoch 50 optim.lr=0.01
"""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from a recipe and key=value overrides", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="RECIPE|PHOTOS|key=value",
                   help="a recipe name or YAML file, or a folder or CSV of your photos (first), then overrides "
                        "like optim.lr=0.05")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder where it stopped")
    p.add_argument("--from-epoch", type=int, metavar="N",
                   help="with --resume: continue from the run's epoch_NNN.pt (train.keep_every) instead, the later "
                        "epochs cut off and their checkpoints moved to RUN/rolled_back/ (the ctrl+c method)")
    p.add_argument("--retrain-on-all", action="store_true",
                   help="then train again, same settings, on train + val (as the fastai GTSRB tutorial does "
                        "before testing); written to <run>-all")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default")
    p.set_defaults(func=run)


def run(args) -> int:
    started = time.monotonic()  # a time budget counts from here, as the user's clock does: torch's import included
    from resnetlab.run.finish import retrain_config
    from resnetlab.run.fit import fit
    from resnetlab.run.prepare import prepare
    from resnetlab.train.loop import Preempted

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
        session = prepare(None, run_name="", resume=Path(args.resume), overrides=overrides,
                          from_epoch=args.from_epoch, started=started)
    elif args.from_epoch is not None:
        raise UserError("--from-epoch N rolls a run back: give it with --resume RUN")
    else:
        recipe, overrides, run_name = recipe_or_photos(recipe, overrides)
        notes: list[str] = []
        cfg = load_config(recipe, overrides, notes=notes)
        if os.environ.get("RANK", "0") == "0":  # under torchrun one process speaks for all
            for note in notes:
                print(f"note: {note}")
        session = prepare(cfg, run_name=run_name, started=started)
    try:
        fit(session)
        if args.retrain_on_all:
            cfg = retrain_config(session.run_dir)
            print(f"retraining on train + val: {cfg.train.name}")
            fit(prepare(cfg, run_name=""))
    except Preempted as e:
        if session.dist.main:  # every rank stops; one says so
            print(f"resnetlab train: {e}", file=sys.stderr)
        return Preempted.exit_code
    return 0


def recipe_or_photos(first: str | None, overrides: list[str]) -> tuple[str | None, list[str], str]:
    """(recipe, overrides, run name) for `train FIRST ...`: a folder or CSV of photos trains the photos
    recipe on it (data.dataset=FIRST), named after the folder; anything else is a recipe name or file."""
    if first is None:
        return None, overrides, "run"
    path = Path(first)
    if not (path.is_dir() or (path.suffix.lower() == ".csv" and path.is_file())):
        if path.suffix.lower() == ".csv" or ("/" in first and path.suffix not in (".yaml", ".yml")):
            raise UserError(f"{first}: no such folder or CSV file (train takes a recipe name or .yaml file, or "
                            "a folder or CSV of photos)")
        return first, overrides, path.stem
    if any(resolve_key(o.split("=", 1)[0].strip()) == "data.dataset" for o in overrides if "=" in o):
        raise UserError(f"{first} is the data set already: leave out data.dataset, or give a recipe name first")
    name = path.stem if path.is_file() else path.resolve().name
    return PHOTOS_RECIPE, [f"data.dataset={first}", *overrides], name or "photos"
