"""`resnetlab env`: versions, device and threads, to paste into a bug report."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("env", help="versions, device and threads (for bug reports)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.device import environment, resolve_precision, select_device

    device = select_device("auto")
    info = {**environment(device), "default_precision": resolve_precision("auto", device)}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:<18} {value}")
    return 0
