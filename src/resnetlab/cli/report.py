"""`resnetlab report RUN`: one self-contained HTML file from a run folder."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write RUN/report.html: config, data, curves, metrics, errors, calibration")
    p.add_argument("run", help="run folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.evaluate.report import build_report
    from resnetlab.run_folder import check_run_dir

    out = build_report(check_run_dir(Path(args.run)))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, images inlined: open it offline)")
    return 0
