"""How far a reader travels to follow one `resnetlab train` call: the package's files and functions it
enters, and its moves between files, each call from one function into another counted once (a loop's
steps are one pass) and import-time code left out.

    PYTHONPATH=src .venv/bin/python benchmarks/code_path.py [RECIPE key=value ...] [--record]

Read in the order the calls first happen: a call into another file is a move, and so is coming back to
the caller's file for its next call; a move back is one into a file the reader had already left. Run
it on two commits (a git worktree of each, PYTHONPATH=its src) to compare a restructuring: the figures
depend on the code, not on the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DEFAULT = ["fashion-mnist-fast", "train.time_budget=2m", "train.limit_batches=20", "train.progress=false"]


def follow(argv: list[str]) -> dict:
    import resnetlab
    from resnetlab.cli import main

    package = str(Path(resnetlab.__file__).parent) + "/"
    seen: set[tuple[str, str, str, str]] = set()
    path: list[tuple[str, str, str]] = []  # (caller file, callee file, callee function), first calls only

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(package) or frame.f_code.co_name == "<module>":
            return
        caller = frame.f_back
        while caller is not None and not caller.f_code.co_filename.startswith(package):
            caller = caller.f_back  # through torch, rich and the standard library back into the package
        if caller is None or caller.f_code.co_name == "<module>":  # import-time code: not the call's path
            return
        key = (caller.f_code.co_filename, caller.f_code.co_qualname, frame.f_code.co_filename, frame.f_code.co_qualname)
        if key not in seen:
            seen.add(key)
            path.append((key[0][len(package):], key[2][len(package):], key[3]))

    sys.setprofile(profile)
    try:
        main(["train", *argv])
    finally:
        sys.setprofile(None)
    here, entered, moves, returns = path[0][0] if path else "", set(), 0, 0
    entries: dict[str, int] = {}  # how many separate times the reader enters each file
    for caller, callee, _ in path:
        if caller != here:  # back in the caller's file for its next call
            moves, returns = moves + 1, returns + 1
            entries[caller] = entries.get(caller, 0) + 1
        if callee != caller:
            moves += 1
            returns += callee in entered
            entries[callee] = entries.get(callee, 0) + 1
        entered |= {caller, callee}
        here = callee
    return {"files": len({f for c, f, _ in path} | {c for c, _, _ in path}),
            "functions": len({(f, fn) for _, f, fn in path}), "moves": moves, "return_moves": returns,
            "entries": dict(sorted(entries.items(), key=lambda kv: -kv[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("args", nargs="*", help="recipe and key=value overrides (default: %(default)s)")
    parser.add_argument("--record", action="store_true", help="write the figures to benchmarks/results/")
    args = parser.parse_args()
    argv = args.args or DEFAULT
    with tempfile.TemporaryDirectory() as out:
        found = follow([*argv, f"train.out_dir={out}"])
    print(f"resnetlab train {' '.join(argv)}: {found['files']} files, {found['functions']} functions, "
          f"{found['moves']} moves between files, {found['return_moves']} of them back into a file already left")
    print("entries into each file, most first:", ", ".join(f"{f} {n}" for f, n in found["entries"].items()))
    if args.record:
        from results import record  # benchmarks/ is on sys.path when this script runs

        how = "first calls only (a loop counted once), package files only"
        record(__file__, "train-" + argv[0], [
            {"metric": "files entered", "value": found["files"], "unit": "files", "n": 1, "how": how},
            {"metric": "functions entered", "value": found["functions"], "unit": "functions", "n": 1, "how": how},
            {"metric": "moves between files", "value": found["moves"], "unit": "moves", "n": 1, "how": how},
            {"metric": "moves back into a file already left", "value": found["return_moves"], "unit": "moves",
             "n": 1, "how": how}])


if __name__ == "__main__":
    main()
