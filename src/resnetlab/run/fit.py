"""fit(): a prepared run, trained and finished: the training loop (train/loop.py) with what a run does
around it, and the same end as the command line's (run/finish.py).

Around the loop: status.json, the start banner and the live progress bar, stop signals read at
step boundaries, the metrics and a checkpoint snapshot at each epoch's end, written in the background
(run/saving.py: last.pt every train.checkpoint_interval_s, and at the end or a stop; inside an epoch on
a signal or train.checkpoint_every), curves.png at most once a minute and at the end or a stop, TensorBoard,
MLflow and W&B (train.log_to: run/trackers.py), a time budget's length correction, and the user's
callbacks (minGPT style), ``{event: [fn, ...]}``: ``on_batch_end(session, info)``,
``on_epoch_end(session, record)``, ``on_train_end(session, result)``. They observe; the loop does not
depend on them. After the last epoch the test split is scored once, then calibration, figures and
report.html.
"""

from __future__ import annotations

import difflib
import time
from collections import defaultdict
from typing import Callable

import torch
from rich.console import Console

from resnetlab import run_folder as rf
from resnetlab.errors import UserError
from resnetlab.io import WriteFailed, write_json
from resnetlab.run.figures import Curves
from resnetlab.run.finish import finish_run
from resnetlab.run.progress import EpochProgress, announce, epoch_line, split_score
from resnetlab.run.saving import Checkpoints
from resnetlab.run.stopping import run_status, signal_name, stop_agreed, stop_on_signals
from resnetlab.run.tensorboard import TensorBoardLogger
from resnetlab.run.trackers import tracking
from resnetlab.train.loop import (
    Hooks,
    NonFiniteLoss,
    Preempted,
    RunEnd,
    StopTraining,
    check_trainable,
    train,
    val_metrics,
)
from resnetlab.train.session import Session

Callback = Callable[..., None]
EVENTS = ("on_batch_end", "on_epoch_end", "on_train_end")
STOPS = (Preempted, StopTraining, KeyboardInterrupt, NonFiniteLoss)  # a run stopped, not failed: curves drawn


def fit(s: Session, callbacks: dict[str, list[Callback]] | None = None, console: Console | None = None) -> dict:
    console = console or Console(soft_wrap=True, quiet=not s.dist.main)  # rank 0 speaks for all ranks
    callbacks = check_callbacks(callbacks)
    check_trainable(s)
    tensorboard = TensorBoardLogger(s) if s.dist.main and s.cfg.train.tensorboard else None
    if tensorboard is not None:  # first, so an epoch is logged even if a later callback stops the run
        for event, fns in tensorboard.callbacks().items():
            callbacks[event] = fns + callbacks[event]
    correction = None
    if s.plan is not None:  # a time budget: its correction is one more callback (budget/correction.py)
        from resnetlab.budget.correction import LengthCorrection

        correction = LengthCorrection(s)
    with run_status(s), tracking(s) as tracked, EpochProgress(s, console) as progress, \
            stop_on_signals() as stop:
        for event, fns in tracked.items():  # before the user's: an epoch is logged even if they stop the run
            callbacks[event] = fns + callbacks[event]
        announce(s, console)
        t = s.cfg.train
        if t.score_untrained and s.state.epoch == 0 and s.state.step == 0:  # a resume has trained already
            score_untrained(s, console)
        hooks = RunHooks(s, console, progress, stop, callbacks, correction)
        try:
            train(s, hooks)
        except BaseException as e:
            hooks.stopped(s, e, tensorboard)
            raise
        hooks.checkpoints.close(s)  # last.pt and best.pt on disk: the test split is scored from best.pt
        hooks.draw_curves()
        trained_at = time.monotonic()
        result = finish_run(s, console)
        if correction is not None:
            correction.report(console, trained_at=trained_at)
        for fn in callbacks["on_train_end"]:
            fn(s, result)
    return result


class RunHooks(Hooks):
    """A run's side of the loop: the progress bar, signals, checkpoints, curves, the epoch line, a
    time budget's correction and the user's callbacks."""

    def __init__(self, s: Session, console: Console, progress: EpochProgress, stop: list[str],
                 callbacks: defaultdict, correction=None):
        self.console, self.progress, self.stop, self.callbacks = console, progress, stop, callbacks
        self.correction = correction
        self.curves = Curves(s.run_dir / rf.CURVES)
        self.checkpoints = Checkpoints(s)
        self.history, self.main = s.state.history, s.dist.main

    def say(self, line: str) -> None:
        self.progress.say(line)

    def epoch_begin(self, s: Session, epoch: int, first: int) -> None:
        self.progress.start(epoch, completed=first)

    def batch_end(self, s: Session, info: dict) -> None:
        self.progress.update(info["step_in_epoch"], info["sums"], info["seen0"], info["started"])
        public = {k: info[k] for k in ("epoch", "step", "step_in_epoch", "lr", "loss")}
        for fn in self.callbacks["on_batch_end"]:
            fn(s, public)

    def step_end(self, s: Session, step: int) -> RunEnd | None:
        if self.correction is not None and (decision := self.correction.step_done(step)) is not None:
            self.progress.say(decision.line)  # the budget's look at its clock, where it moves the end
            return decision.end
        return None

    def steps_done(self, s: Session, epoch: int) -> None:
        self.progress.stop()

    def stop_requested(self, s: Session, i: int | None) -> str | None:
        return signal_name(self.stop) if stop_agreed(s, self.stop, i) else None

    def save_position(self, s: Session, epoch: int, step: int, sums: torch.Tensor) -> None:
        self.checkpoints.position(s, epoch, step, sums)

    def epoch_end(self, s: Session, record: dict) -> None:
        self.checkpoints.epoch_end(s, record)  # metrics, then the snapshot (written in the background)
        if s.dist.main:
            self.curves.update(self.history)
            self.console.print(epoch_line(s, record))
        for fn in self.callbacks["on_epoch_end"]:
            fn(s, record)

    def draw_curves(self) -> None:
        if self.main:
            self.curves.update(self.history, final=True)

    def stopped(self, s: Session, error: BaseException, tensorboard: TensorBoardLogger | None) -> None:
        """The run stops on ``error``: what is not on disk yet is written (nothing trained is lost), and
        for a stop (not a failure) the curves and TensorBoard's held events too. After a failed write
        nothing more is tried: the disk or folder that failed it would fail the rest, and its error
        is the one to show."""
        if isinstance(error, WriteFailed):
            self.checkpoints.abandon()
            return
        self.checkpoints.close(s)
        if isinstance(error, STOPS):
            self.draw_curves()
            if tensorboard is not None:
                tensorboard.write_held()


def check_callbacks(callbacks: dict[str, list[Callback]] | None) -> defaultdict:
    """The callbacks by event; an unknown event name is an error (a typo would never be called)."""
    for name in callbacks or {}:
        if name not in EVENTS:
            near = difflib.get_close_matches(name, EVENTS, n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise UserError(f"unknown callback event '{name}': {hint}events are {', '.join(EVENTS)}")
    return defaultdict(list, {k: list(v) for k, v in (callbacks or {}).items()})


def score_untrained(s: Session, console: Console) -> None:
    """train.score_untrained: val scored before the first step, printed and kept in untrained.json."""
    record = val_metrics(s)
    if s.dist.main:
        write_json(s.run_dir / rf.UNTRAINED, record)
        console.print(f"before training: {split_score(record, 'val')} (n={len(s.data.splits['val'])})")
