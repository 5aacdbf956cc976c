"""What a run writes, and when. An epoch's end writes the metrics and takes a snapshot of the checkpoint
state (every tensor copied where it lives: on a GPU, on the GPU; into the tensors of a snapshot already
written when there is one), so training goes on while it is written:

- last.pt at the first epoch end, then at an epoch end once train.checkpoint_interval_s have passed
  since it was last written (0: every epoch end), and always at the run's end and when it stops (a
  signal, Ctrl+C, a callback's StopTraining, a NaN loss, any error but a failed write), from the newest
  epoch end;
- best.pt (the epoch whose val score improved) is held in memory and written with the next last.pt,
  before it, and at the run's end before the test split is scored from it: a last.pt on disk never names
  a best score whose best.pt is not on disk too;
- snapshot-K.pt (the end of an SGDR cycle) and epoch_NNN.pt (train.keep_every) at their epochs, with
  last.pt: they were asked for;
- last.pt inside an epoch (train.checkpoint_every, or a stop signal): the position and running sums,
  written before the next step (a kill right after it resumes from there).

Epoch-end writes run in one background thread, atomically (io.py): the next write first waits for the
one before, an error in the thread (a full disk) is raised in the training thread at the next epoch end,
write or stop, and the run's end waits for the last one. Rank 0 writes; the others wait at epoch ends.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from pathlib import Path

import torch

from resnetlab import run_folder as rf
from resnetlab.checkpoint import save_checkpoint, snapshot
from resnetlab.run_folder import write_metrics, write_skipped
from resnetlab.train import distributed
from resnetlab.train.session import Session, checkpoint_state
from resnetlab.train.stages import snapshot_epochs

Job = tuple[list[Path], dict, Path | None]  # the files, the state they get, where the replaced last.pt goes
WRITER_THREAD = "resnetlab-checkpoint-writer"  # the writer thread's name (a test waits for it by name)


class BackgroundWriter:
    """One thread at a time writing checkpoints; an exception in it is kept and raised by the next
    ``join`` in the training thread (at the next epoch end once the thread is done), never lost."""

    def __init__(self):
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, jobs: list[Job]) -> None:
        self.join()  # writes land in the order they were asked for
        self.thread = threading.Thread(target=self._run, args=(jobs,), name=WRITER_THREAD)
        self.thread.start()

    def _run(self, jobs: list[Job]) -> None:
        try:
            for targets, state, keep in jobs:
                save_checkpoint(targets, state, keep=keep)
        except BaseException as e:  # noqa: BLE001 - raised again in the training thread by join()
            self.error = e

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def join_quietly(self) -> None:
        """Wait for the write in flight, its error dropped: another one is already being raised."""
        try:
            self.join()
        except Exception:  # noqa: BLE001 - the error being raised is the one to show
            pass


class SnapshotPool:
    """Snapshots no one holds any more, kept so the next snapshot copies into their tensors instead of
    allocating a model's worth of memory again (at most KEEP: the newest epoch end and best.pt cycle
    through two)."""

    KEEP = 2

    def __init__(self):
        self.spare: list[dict] = []

    def take(self, state: dict) -> dict:
        return snapshot(state, self.spare.pop() if self.spare else None)

    def give_back(self, taken: dict) -> None:
        if len(self.spare) < self.KEEP:
            self.spare.append(taken)


class Checkpoints:
    """A run's checkpoints between its epochs: the snapshots not yet on disk, and their writer."""

    def __init__(self, s: Session):
        self.every_s = s.cfg.train.checkpoint_interval_s
        self.writer, self.pool = BackgroundWriter(), SnapshotPool()
        self.last: dict | None = None  # the newest epoch end, not yet in last.pt
        self.best: dict | None = None  # what best.pt is to hold, not yet written
        self.in_flight: list[dict] = []  # the snapshots the writer thread is writing
        self.written_at = -math.inf  # time.monotonic() when last.pt was last written (asked for)

    def epoch_end(self, s: Session, record: dict) -> None:
        """Metrics first, then the checkpoints: a kill before last.pt is on disk repeats the epochs since.

        best.pt is chosen on validation top-1 only; without a val split there is one model, last.pt."""
        if not s.dist.main:
            distributed.barrier(s.dist)  # the others wait until rank 0 has taken its snapshot
            return
        self._reap(wait=False)  # a failed write's error is raised here
        streamed = getattr(s.loaders["train"], "skipped", {})  # bad files streaming workers found, run so far
        if streamed:
            known = {p for p, _ in s.data.skipped}
            write_skipped(s.run_dir, s.data.skipped + [(p, r) for p, r in streamed.items() if p not in known])
        write_metrics(s.run_dir, s.state.history)
        old = (self.last, self.best)
        self.last = self.pool.take(checkpoint_state(s))
        if s.state.improved:
            self.best = self.last
        self._free(*old)
        asked = []
        snapshots = sorted(snapshot_epochs(s.cfg))
        if record["epoch"] in snapshots:  # the end of an SGDR cycle: a model for snapshot ensembling
            asked.append(s.run_dir / rf.snapshot_name(snapshots.index(record['epoch']) + 1))
        if s.cfg.train.keep_every and record["epoch"] % s.cfg.train.keep_every == 0:  # a point to roll back to
            asked.append(s.run_dir / rf.epoch_name(record["epoch"]))
        if asked or time.monotonic() - self.written_at >= self.every_s:
            self._reap(wait=True)  # writes land in the order they were asked for
            jobs = self._jobs(s, asked)
            self.in_flight = [state for _, state, _ in jobs]
            self.writer.submit(jobs)
        distributed.barrier(s.dist)

    def position(self, s: Session, epoch: int, step: int, sums: torch.Tensor) -> None:
        """last.pt in the middle of an epoch: the position (``step`` of ``epoch`` done) and the epoch's
        running sums so far, summed over ranks. Written before the next step (best.pt first)."""
        partial = distributed.all_sum(sums.clone(), s.dist).tolist()
        if s.dist.main:
            self._reap(wait=True)
            old = (self.last, self.best)
            # the live state, not a snapshot: written here, before training changes it (never pooled)
            self.last = checkpoint_state(s, dataclasses.replace(s.state, epoch=epoch, step=step, partial=partial))
            self._write_now(s)
            self._free(*old)

    def close(self, s: Session) -> None:
        """The end of the run, or a stop: what is not on disk yet is written, and waited for."""
        if s.dist.main:
            self._reap(wait=True)
            self._write_now(s)

    def abandon(self) -> None:
        """A write failed: the write in flight is waited for, and nothing more is tried (the disk or
        folder that failed one would fail the rest; the first error is the one to show)."""
        self.writer.join_quietly()
        self.last = self.best = None

    def _write_now(self, s: Session) -> None:
        for targets, state, keep in self._jobs(s):
            save_checkpoint(targets, state, keep=keep)

    def _reap(self, *, wait: bool) -> None:
        """The writer's snapshots back to the pool once it is done (``wait``: wait for it); its error raised."""
        if wait or not self.writer.running():
            done, self.in_flight = self.in_flight, []
            self.writer.join()
            self._free(*done)

    def _free(self, *taken: dict | None) -> None:
        """Pool the snapshots among ``taken`` that nothing holds any more (pending or being written)."""
        held = [self.last, self.best, *self.in_flight]
        for snap in {id(t): t for t in taken if t is not None}.values():
            if all(snap is not h for h in held):
                self.pool.give_back(snap)

    def _jobs(self, s: Session, asked: list[Path] = ()) -> list[Job]:
        """The pending snapshots as writes: best.pt first, then last.pt (with best.pt when they are one
        epoch's, serialised once) and the files asked for; they are then no longer pending."""
        jobs = []
        if self.best is not None and self.best is not self.last:
            jobs.append(([s.run_dir / rf.BEST], self.best, None))
        if self.last is not None:
            both = [s.run_dir / rf.BEST] if self.best is self.last else []
            jobs.append(([s.run_dir / rf.LAST, *both, *asked], self.last, s.run_dir / rf.PREVIOUS))
            self.written_at = time.monotonic()
        self.last = self.best = None
        return jobs
