"""Accuracy against wall time, training from scratch on real data on this CPU.

After every epoch the test split is scored (outside the timed training), so the
table shows what a user stopping at that point would have:

    .venv/bin/python benchmarks/cpu_from_scratch.py cifar10-fast data.dataset=../shared/data/cifar10-jpeg
    .venv/bin/python benchmarks/cpu_from_scratch.py fashion-mnist-fast
"""

from __future__ import annotations

import sys
import tempfile
import time

from resnetlab.config import load_config
from resnetlab.train.session import prepare
from resnetlab.train.loop import evaluate_split, fit


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    recipe, overrides = argv[0], argv[1:]
    out = tempfile.mkdtemp(prefix="bench-")
    cfg = load_config(recipe, [*overrides, f"train.out_dir={out}", "train.progress=false", "train.report=false"])
    session = prepare(cfg, run_name=recipe)
    print(f"{recipe}: {len(session.data.splits['train']):,} train / {len(session.data.splits['test']):,} test "
          f"images, {cfg.model.name}, {session.precision} on {session.device}")
    rows, clock = [], {"train": 0.0}

    def on_epoch_end(s, record):
        clock["train"] += record["seconds"]
        scoring = time.perf_counter()
        result = evaluate_split(s, "test")
        s.model.train()
        rows.append((record["epoch"], clock["train"], 100 * result["top1"]))
        print(f"epoch {record['epoch']:>3}  training time {clock['train']:7.1f} s  test top-1 {100 * result['top1']:6.2f}%"
              f"  (scored in {time.perf_counter() - scoring:.1f} s, n={result['n']})", flush=True)

    fit(session, callbacks={"on_epoch_end": [on_epoch_end]})
    best = max(rows, key=lambda r: r[2])
    print(f"final: {rows[-1][2]:.2f}% after {rows[-1][1]:.0f} s of training; best {best[2]:.2f}% at epoch {best[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
