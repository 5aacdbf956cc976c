"""What an epoch's end costs beyond its validation, on the CPU, for a ResNet-9 of ~6.6M parameters.

    .venv/bin/python benchmarks/epoch_end.py [--epochs N] [--record] [key=value ...]

A run's own epoch-end path (run/fit.py's RunHooks: metrics.jsonl, the checkpoint snapshot and its
background write, curves.png, the epoch line, TensorBoard's callback) is timed at every epoch end of a
short run: ResNet-9 with filters [64, 128, 256, 512] on synthetic 32 px images, one training batch an
epoch (train.limit_batches=1), validation excluded (it runs before the timed part). The first epoch end
hands last.pt and best.pt to the writer thread; the later ones, within train.checkpoint_interval_s,
only take the snapshot. For comparison, a synchronous write of last.pt and best.pt (what writing both at
every epoch end would cost) is timed on the same state. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from resnetlab import run_folder as rf
from resnetlab.checkpoint import save_checkpoint
from resnetlab.config import load_config
from resnetlab.run.fit import RunHooks
from resnetlab.run.prepare import prepare
from resnetlab.run.progress import EpochProgress
from resnetlab.run.tensorboard import TensorBoardLogger
from resnetlab.train.loop import train
from resnetlab.train.session import Session, checkpoint_state

FILTERS = "[64,128,256,512]"


class TimedHooks(RunHooks):
    """A run's hooks, with each epoch end's wall time kept."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds: list[float] = []

    def epoch_end(self, s: Session, record: dict) -> None:
        start = time.perf_counter()
        super().epoch_end(s, record)
        self.seconds.append(time.perf_counter() - start)


def write_images(root: Path, classes: int = 3, per_class: int = 16, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


def timed_run(work: Path, epochs: int, overrides: list[str]) -> tuple[Session, list[float], float]:
    """The epoch ends' seconds of a short run, and the run end's write (what was not yet on disk)."""
    cfg = load_config(None, [f"data.dataset={write_images(work / 'data')}", f"train.out_dir={work / 'runs'}",
                             "train.name=epoch-end", "model.name=resnet9", f"model.filters={FILTERS}",
                             f"train.epochs={epochs}", "train.batch_size=8", "train.eval_batch_size=16",
                             "train.limit_batches=1", "data.val_fraction=0.25", "train.progress=false",
                             "train.report=false", "train.final_test=false", "train.device=cpu", *overrides])
    s = prepare(cfg, run_name="epoch-end")
    console = Console(file=io.StringIO(), soft_wrap=True)  # the epoch line is formatted, not shown
    callbacks = defaultdict(list)
    if s.cfg.train.tensorboard:
        callbacks.update(TensorBoardLogger(s).callbacks())
    with EpochProgress(s, console) as progress:
        hooks = TimedHooks(s, console, progress, [], callbacks)
        train(s, hooks)
        start = time.perf_counter()
        hooks.checkpoints.close(s)
        end_write = time.perf_counter() - start
    return s, hooks.seconds, end_write


def synchronous_write(s: Session, work: Path, n: int = 3) -> float:
    """The median seconds of serialising the state once and writing it as last.pt and best.pt."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        save_checkpoint([work / rf.LAST, work / rf.BEST], checkpoint_state(s), keep=work / rf.PREVIOUS)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--record", action="store_true", help="also write the figures to benchmarks/results/")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="resnetlab-epoch-end-") as tmp:
        s, seconds, end_write = timed_run(Path(tmp), args.epochs, args.overrides)
        params = sum(p.numel() for p in s.model.parameters())
        (Path(tmp) / "sync").mkdir()
        sync = synchronous_write(s, Path(tmp) / "sync")
    ms = [1000 * t for t in seconds]
    out = {"params": params, "epoch_end_ms": [round(m, 2) for m in ms], "median_ms": round(statistics.median(ms), 2),
           "max_ms": round(max(ms), 2), "first_ms": round(ms[0], 2), "run_end_write_ms": round(1000 * end_write, 1),
           "synchronous_write_ms": round(1000 * sync, 1), "threads": torch.get_num_threads()}
    how = (f"ResNet-9, filters {FILTERS}, {params / 1e6:.2f}M parameters, SGD; run/fit.py's epoch-end hooks, "
           "validation excluded; train.checkpoint_interval_s at its default")
    figures = [
        {"metric": "epoch end beyond validation, median", "value": out["median_ms"], "unit": "ms", "n": len(ms),
         "how": how},
        {"metric": "epoch end beyond validation, slowest", "value": out["max_ms"], "unit": "ms", "n": len(ms),
         "how": how},
        {"metric": "first epoch end (hands last.pt and best.pt to the writer thread)", "value": out["first_ms"],
         "unit": "ms", "n": 1, "how": how},
        {"metric": "synchronous write of last.pt and best.pt (for comparison)",
         "value": out["synchronous_write_ms"], "unit": "ms", "n": 3, "how": "median; one serialisation, two files"},
    ]
    print(json.dumps(out))
    if args.record:
        from results import record  # benchmarks/ is on sys.path when this script runs

        print(f"recorded: {record(__file__, 'resnet9-6.6m-cpu', figures)}")


if __name__ == "__main__":
    main()
