"""What a run writes, and when: at each epoch's end the metrics, the curves and the checkpoints
(last.pt; best.pt when val top-1 improved; snapshot-K.pt at the end of an SGDR cycle; epoch_NNN.pt every
train.keep_every epochs), and last.pt in
the middle of an epoch (train.checkpoint_every, or a stop signal). Rank 0 writes; the others wait."""

from __future__ import annotations

import dataclasses

import torch

from resnetlab import run_folder as rf
from resnetlab.checkpoint import save_checkpoint
from resnetlab.run.figures import Curves
from resnetlab.run_folder import write_metrics, write_skipped
from resnetlab.train import distributed
from resnetlab.train.session import Session, checkpoint_state
from resnetlab.train.stages import snapshot_epochs


def save_epoch(s: Session, record: dict, curves: Curves) -> None:
    """Metrics and curves first, then checkpoints: a kill in between only repeats this epoch.

    best.pt is chosen on validation top-1 only; without a val split there is one model, last.pt."""
    if not s.dist.main:
        distributed.barrier(s.dist)  # the others wait until rank 0 has written the checkpoints
        return
    streamed = getattr(s.loaders["train"], "skipped", {})  # bad files streaming workers found, run so far
    if streamed:
        known = {p for p, _ in s.data.skipped}
        write_skipped(s.run_dir, s.data.skipped + [(p, r) for p, r in streamed.items() if p not in known])
    write_metrics(s.run_dir, s.state.history)
    curves.update(s.state.history)
    snapshots = sorted(snapshot_epochs(s.cfg))
    targets = [s.run_dir / rf.LAST] + ([s.run_dir / rf.BEST] if s.state.improved else [])
    if record["epoch"] in snapshots:  # the end of an SGDR cycle: a model for snapshot ensembling
        targets.append(s.run_dir / rf.snapshot_name(snapshots.index(record['epoch']) + 1))
    if s.cfg.train.keep_every and record["epoch"] % s.cfg.train.keep_every == 0:  # a point to roll back to
        targets.append(s.run_dir / rf.epoch_name(record["epoch"]))
    save_checkpoint(targets, checkpoint_state(s), keep=s.run_dir / rf.PREVIOUS)  # serialised once for all
    distributed.barrier(s.dist)


def save_partial(s: Session, epoch: int, step: int, sums: torch.Tensor) -> None:
    """last.pt in the middle of an epoch: the position (``step`` of ``epoch`` done) and the epoch's
    running sums so far, summed over ranks."""
    partial = distributed.all_sum(sums.clone(), s.dist).tolist()
    if s.dist.main:
        position = dataclasses.replace(s.state, epoch=epoch, step=step, partial=partial)
        save_checkpoint(s.run_dir / rf.LAST, checkpoint_state(s, position), keep=s.run_dir / rf.PREVIOUS)
