"""What a user sees while a run trains: the start banner and the live progress bar of each epoch."""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from resnetlab import run_folder as rf
from resnetlab.device import precision_reason
from resnetlab.run_folder import write_skipped
from resnetlab.train.session import Session


class EpochProgress:
    """The live progress bar of an epoch (rank 0 only): loss, accuracy and images/s of this rank's share."""

    def __init__(self, s: Session, console: Console):
        self.s = s
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:5.1f}%  {task.fields[ips]:.0f} img/s"),
            TimeRemainingColumn(), console=console, transient=True,
            disable=not (s.cfg.train.progress and s.dist.main),
        )
        self.task, self.last = None, 0.0

    def __enter__(self) -> "EpochProgress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def start(self, epoch: int, completed: int) -> None:
        self.task = self.bar.add_task(f"epoch {epoch + 1}/{self.s.cfg.train.epochs}", total=self.s.steps_per_epoch,
                                      completed=completed, loss=0, acc=0, ips=0)

    def update(self, i: int, sums: torch.Tensor, seen0: float, start: float) -> None:
        now = time.perf_counter()
        if self.bar.disable or not self.s.dist.main or (now - self.last < 0.5 and i != self.s.steps_per_epoch - 1):
            return  # at most two updates a second: each reads the sums back from the device (a sync)
        loss, correct, n = sums.tolist()
        n = max(n, 1)
        self.bar.update(self.task, completed=i + 1, loss=loss / n, acc=100 * correct / n,
                        ips=self.s.dist.world * (n - seen0) / max(now - start, 1e-9))
        self.last = now

    def stop(self) -> None:
        self.bar.remove_task(self.task)


def announce(s: Session, console: Console) -> None:
    """What the run starts with: skipped files, notes, class balance, what trains where, and why this precision."""
    cfg, d = s.cfg, s.dist
    if d.main:
        write_skipped(s.run_dir, s.data.skipped)
    if s.data.skipped:
        console.print(f"skipped {len(s.data.skipped)} bad images: see {s.run_dir / rf.SKIPPED}")
    for note in s.data.notes + s.notes:
        console.print(f"note: {note}")
    console.print(s.data.balance())
    console.print(
        f"training {cfg.model.name} on {len(s.data.splits['train'])} images "
        f"({s.data.image_size} px, {len(s.data.classes)} classes) for {cfg.train.epochs} epochs on "
        f"{s.device} in {s.precision}{f' x {d.world} processes' if d.enabled else ''}; run folder {s.run_dir}"
    )
    console.print(f"precision {precision_reason(s.precision, cfg.train.precision, s.device)}")
    if s.plan is not None:  # train.time_budget: what was timed here, and what it chose
        for line in s.plan.table() if s.plan.rung is not None else []:
            console.print(line)
        console.print(s.plan.line())
    if "val" not in s.loaders:
        console.print(f"note: no validation split, so no best checkpoint is chosen: the model is {rf.LAST} "
                      "(set data.val_fraction to choose the best epoch on validation)")
