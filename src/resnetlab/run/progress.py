"""What a user sees while a run trains: the start banner, the live progress bar of each epoch, and
each finished epoch's line."""

from __future__ import annotations

import math
import time

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from resnetlab import run_folder as rf
from resnetlab.device import precision_reason
from resnetlab.run_folder import write_skipped
from resnetlab.train.loop import run_epochs
from resnetlab.train.session import Session

# the bar moves every step from host counts; its loss and accuracy are read from the device (a host sync,
# which drains the GPU's queue) only on every READ_EVERY-th step of an epoch, and at most every REFRESH_S s
READ_EVERY = 10
REFRESH_S = 0.5


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
        self.task = self.bar.add_task(f"epoch {epoch + 1}/{run_epochs(self.s)}", total=self.s.steps_per_epoch,
                                      completed=completed, loss=0, acc=0, ips=0)

    def update(self, i: int, sums: torch.Tensor, seen0: float, start: float) -> None:
        """After step ``i`` of the epoch; ``sums``: its running sums on the device (evaluate/task.py)."""
        if self.bar.disable or not self.s.dist.main:
            return
        now = time.perf_counter()
        if i % READ_EVERY != READ_EVERY - 1 or now - self.last < REFRESH_S:
            self.bar.update(self.task, completed=i + 1)  # host values only: no sync
            return
        loss, correct, n = sums.tolist()
        n = max(n, 1)
        self.bar.update(self.task, completed=i + 1, loss=loss / n, acc=100 * correct / n,
                        ips=self.s.dist.world * (n - seen0) / max(now - start, 1e-9))
        self.last = now

    def stop(self) -> None:
        self.bar.remove_task(self.task)

    def say(self, line: str) -> None:
        """A line above the live bar (rank 0 only)."""
        if self.s.dist.main:
            self.bar.console.print(line)


def announce(s: Session, console: Console) -> None:
    """What the run starts with: skipped files, notes, class balance, what trains where, and why this precision."""
    cfg, d = s.cfg, s.dist
    if d.main:
        write_skipped(s.run_dir, s.data.skipped)
    if s.data.skipped:
        console.print(f"skipped {len(s.data.skipped)} bad images: see {s.run_dir / rf.SKIPPED}")
    for note in [*s.data.notes, *s.notes]:
        console.print(f"note: {note}")
    console.print(s.data.balance())
    console.print(
        f"training {cfg.model.name} on {len(s.data.splits['train'])} images "
        f"({s.data.image_size} px, {len(s.data.classes)} classes) for {run_epochs(s)} epochs on "
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


def split_score(record: dict, split: str) -> str:
    """'<split> loss L top-1 A%' (multi-label: 'mAP A%') from a record's <split>_* keys."""
    score = f"mAP {100 * record[f'{split}_map']:.2f}%" if f"{split}_map" in record else \
        f"top-1 {100 * record[f'{split}_top1']:.2f}%"
    return f"{split} loss {record[f'{split}_loss']:.4f} {score}"


def epoch_line(s: Session, record: dict) -> str:
    """The line a finished epoch prints ('*': best.pt was written), and a warning when it diverged."""
    line = f"epoch {record['epoch']:>3}/{run_epochs(s)}  lr {record['lr']:.2e}  train loss {record['train_loss']:.4f}"
    if "train_exact" in record:  # multi-label: exact match of the label set at 0.5, then val mAP (macro)
        line += f" exact {100 * record['train_exact']:.2f}%"
    else:
        line += f" top-1 {100 * record['train_top1']:.2f}%"
    if "val_loss" in record:
        line += f"  {split_score(record, 'val')}"
    if (m := s.cfg.train.monitor) and f"{m}_loss" in record:  # watched only: never chooses best.pt
        line += f"  ({split_score(record, m)}, monitored)"
    line += f"  {record['images_per_s']:.0f} img/s  {record['seconds']:.1f} s"
    if s.cfg.train.size_start or s.cfg.train.size_end:
        line += f"  {record['size']} px"
    line += "  *" if s.state.improved else ""
    guess, formula = guessing_loss(s)
    if diverged(record, len(s.data.classes), guess=guess):
        line += (f"\nwarning: diverged: train loss {record['train_loss']:.2f} is far above {formula} = "
                 f"{guess:.2f}, what guessing scores; lower optim.lr (or add schedule.warmup_epochs)")
    return line


def guessing_loss(s: Session) -> tuple[float, str]:
    """The training loss of a model that predicts nothing, and its formula (evaluate/task.py)."""
    return s.task.guessing_loss(s.data.splits["train"].labels, len(s.data.classes), s.class_weights)


def diverged(record: dict, num_classes: int, *, guess: float | None = None) -> bool:
    """A mean training loss over twice that of guessing (``guess``; ln k by default) means the run blew
    up rather than learned slowly."""
    guess = math.log(num_classes) if guess is None else guess
    return guess > 0 and not record["train_loss"] <= 2 * guess
