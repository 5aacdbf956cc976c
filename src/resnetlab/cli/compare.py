"""`resnetlab compare RUN RUN [...] --out compare.html`: runs side by side on one offline page."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="one self-contained page: curves, differing config keys, metrics with n, "
                                       "per-class F1 deltas")
    p.add_argument("runs", nargs="+", help="two or more run folders")
    p.add_argument("--out", default="compare.html", help="the page to write (default: compare.html)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    from pathlib import Path

    from resnetlab.evaluate.compare import build_compare

    out, warnings = build_compare([Path(r) for r in args.runs], Path(args.out))
    for line in warnings:
        print(f"resnetlab compare: warning: {line}", file=sys.stderr)
    print(f"wrote {out} ({len(args.runs)} runs; images inlined: open it offline)")
    return 0
