"""How long `resnetlab --help` takes, and what `import resnetlab` pulls in.

    .venv/bin/python benchmarks/cli_startup.py [--runs 5]

Times `resnetlab --help` (a fresh interpreter each run, as a user types it) and lists whether
torch, torchvision or matplotlib were imported by `import resnetlab` and by building the parser.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CHECK = """
import sys
import resnetlab
after_import = [m for m in ("torch", "torchvision", "matplotlib") if m in sys.modules]
from resnetlab.cli import build_parser
build_parser()
after_parser = [m for m in ("torch", "torchvision", "matplotlib") if m in sys.modules]
print(after_import, after_parser)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--record", action="store_true", help="also write the figure to benchmarks/results/")
    args = parser.parse_args()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "resnetlab", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    heavy = subprocess.run([sys.executable, "-c", CHECK], check=True, capture_output=True, text=True).stdout.strip()
    print(f"resnetlab --help: {', '.join(f'{t:.3f}' for t in times)} s "
          f"(median {statistics.median(times):.3f} s, n={args.runs})")
    print(f"heavy modules after `import resnetlab`, after building the parser: {heavy}")
    if args.record:
        import torch

        from resnetlab.device import resolve_precision
        from results import hardware_name, record  # benchmarks/ is on sys.path when this script runs

        figure = {"metric": "resnetlab --help", "value": round(statistics.median(times), 3), "unit": "s",
                  "n": args.runs, "how": f"median of {args.runs} fresh interpreters; heavy modules: {heavy}"}
        cpu = torch.device("cpu")  # start-up is CPU work, on any machine
        hardware = hardware_name(cpu, resolve_precision("auto", cpu))
        print(f"recorded: {record(__file__, 'help', [figure], hardware=hardware)}")


if __name__ == "__main__":
    main()
