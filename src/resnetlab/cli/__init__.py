"""The `resnetlab` command: one module per subcommand, each with add_parser() and run()."""

from __future__ import annotations

import argparse
import sys

from resnetlab.errors import UserError

COMMANDS = ("train", "lr-find", "evaluate", "report", "runs", "compare", "tune", "predict", "export", "push", "serve",
            "data", "models", "recipes", "env")


def build_parser() -> argparse.ArgumentParser:
    from resnetlab import __version__
    from resnetlab.cli import (
        compare,
        data,
        env,
        evaluate,
        export,
        lr_find,
        models,
        predict,
        push,
        recipes,
        report,
        runs,
        serve,
        train,
        tune,
    )

    parser = argparse.ArgumentParser(
        prog="resnetlab", description="Train, evaluate and predict with ResNet image classifiers."
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (train, lr_find, evaluate, report, runs, compare, tune, predict, export, push, serve, data, models,
                   recipes, env):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value after an option (`train recipe --resume R k=v`): argparse stops filling a
    # positional list at the first option, so collect the rest here rather than refuse them
    listed = "items" if hasattr(args, "items") else "overrides" if hasattr(args, "overrides") else None
    if extra and listed and all("=" in e and not e.startswith("-") for e in extra):
        getattr(args, listed).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"resnetlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnetlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if "torch.distributed" not in sys.modules:
            raise
        from resnetlab.train.distributed import failure_line

        line = failure_line(e)  # None outside a torchrun run: a bug keeps its traceback
        if line is None:
            raise
        print(f"resnetlab {args.command}: error: {line}", file=sys.stderr)
        return 1
    finally:
        if "torch.distributed" in sys.modules:
            from resnetlab.train.distributed import shutdown

            shutdown()
