"""The training loop: epochs of steps from the state's position to the run's end, validation after
each, and the training state; nothing about files, progress bars, signals or clocks.

``train(s, hooks)`` is the whole loop. What a run does around it (checkpoints, the progress bar,
stop signals, TensorBoard, a time budget's length correction, the user's callbacks) reaches it
through ``Hooks``, whose defaults do nothing; run/fit.py supplies a run's. The loop is the only
writer of ``s.state``.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch

from resnetlab import run_folder as rf
from resnetlab.errors import UserError
from resnetlab.evaluate.inference import infer, infer_sums
from resnetlab.train import distributed
from resnetlab.train.precompute import HeadFeatures
from resnetlab.train.session import SEEN, Session, no_sums, run_moves, val_score
from resnetlab.train.sizes import training_size
from resnetlab.train.stages import (
    apply_stage,
    freeze_bn_statistics,
    laid_position,
    length_free,
    lr_for_step,
    run_steps,
    stage_at,
)
from resnetlab.train.step import train_step

FINITE_CHECK_EVERY = 50  # steps between NaN checks: each is a host sync (and a collective under torchrun)


class NonFiniteLoss(UserError):
    pass


class Preempted(Exception):
    """SIGTERM or SIGINT stopped training at a step boundary; last.pt holds the exact position."""

    exit_code = 75  # EX_TEMPFAIL: "try again later", what a scheduler should requeue

    def __init__(self, signal_name: str, run_dir: Path, epoch: int, step_in_epoch: int):
        super().__init__(
            f"stopped by {signal_name} at epoch {epoch + 1}, step {step_in_epoch}; saved {run_dir / rf.LAST}; "
            f"continue with: resnetlab train --resume {run_dir}"
        )


class StopTraining(Exception):
    """Raised by a callback to end a run early (a tuner pruning a trial); status.json says stopped."""


class RunEnd(NamedTuple):
    """Where a time budget's correction moved the run's end: the step it now ends at, and train.end_moves as they
    now stand (the moves late in the run that re-laid the rest of the schedule)."""
    step: int
    moves: tuple[tuple[int, int], ...] = ()


class Hooks:
    """What the loop tells the run around it, and asks it. The defaults do nothing."""

    def say(self, line: str) -> None:
        """A line for the user (a stage begins, early stopping)."""

    def epoch_begin(self, s: Session, epoch: int, first: int) -> None:
        """Epoch ``epoch`` (0-based) begins at its step ``first`` (0 unless resumed mid-epoch)."""

    def batch_end(self, s: Session, info: dict) -> None:
        """After each step that trained images (a streamed batch whose images were all bad trains none)."""

    def step_end(self, s: Session, step: int) -> RunEnd | None:
        """After every global ``step``; may return where the run should now end (a time budget's length
        correction), which the loop keeps in the state."""
        return None

    def steps_done(self, s: Session, epoch: int) -> None:
        """The epoch's steps are done; its validation comes next."""

    def stop_requested(self, s: Session, i: int | None) -> str | None:
        """The name of a stop signal, read at step ``i`` of an epoch (None: between epochs)."""
        return None

    def save_position(self, s: Session, epoch: int, step: int, sums: torch.Tensor) -> None:
        """A checkpoint inside an epoch: ``step`` steps of ``epoch`` done, its running sums so far."""

    def epoch_end(self, s: Session, record: dict) -> None:
        """Epoch done: ``record`` is in the state's history, the state points at the next epoch."""


def train(s: Session, hooks: Hooks | None = None) -> None:
    """Train from the state's position to the run's end (or an early stop); check_trainable() first."""
    hooks = hooks or Hooks()
    first, head = s.state.epoch, None
    for epoch in itertools.takewhile(lambda e: e * s.steps_per_epoch < run_end(s), itertools.count(first)):
        if (name := hooks.stop_requested(s, None)) is not None:  # came in the previous epoch's last step
            raise Preempted(name, s.run_dir, epoch, 0)
        head = _enter_stage(s, epoch, hooks, head, resumed=epoch == first)
        record = train_epoch(s, epoch, hooks, head)
        if "val" in s.loaders:
            record.update(val_metrics(s))
        if s.cfg.train.monitor:  # watched, never chosen on: val_score reads val keys only
            record.update(monitor_metrics(s, s.cfg.train.monitor))
        s.state.end_epoch(record)  # the state now points at the next epoch's start
        hooks.epoch_end(s, record)
        if early_stop(s, hooks):
            break


def check_trainable(s: Session) -> None:
    """One line when there is nothing to train, or the config watches a split the data lacks."""
    first, t = s.state.epoch, s.cfg.train
    if first >= t.epochs or first * s.steps_per_epoch + s.state.step >= run_end(s):
        resume = (f" and reached train.max_steps={t.max_steps}; resume with train.max_steps=0"
                  f"{' train.end_moves=[]' if t.end_moves else ''} and" if t.max_steps else "; resume with")
        raise UserError(f"nothing to train: {s.run_dir} has finished {first} of train.epochs={t.epochs}{resume} "
                        f"train.epochs={first + 1} or more, or score it with resnetlab evaluate")
    for key in ("early_stop_patience", "score_untrained"):
        if getattr(t, key) and "val" not in s.loaders:
            raise UserError(f"train.{key} needs a validation split to watch: set data.val_fraction=0.1")
    if t.monitor and t.monitor not in s.loaders:
        raise UserError(f"train.monitor={t.monitor}: the data has no {t.monitor} split to watch; set "
                        f"data.{t.monitor}_fraction=0.1 or leave train.monitor empty")


def run_end(s: Session) -> int:
    """The global step the run ends at: train.epochs (or train.max_steps), unless a time budget's
    correction has moved it (the state keeps that)."""
    return s.state.end_step or run_steps(s.cfg, s.steps_per_epoch)


def run_epochs(s: Session) -> int:
    """The epochs the run trains (the last may be cut short by its end step)."""
    return math.ceil(run_end(s) / s.steps_per_epoch) if s.state.end_step else s.cfg.train.epochs


def train_epoch(s: Session, epoch: int, hooks: Hooks, head: HeadFeatures | None = None) -> dict:
    """One pass over the training split from the state's step (0 unless resumed mid-epoch); returns the
    epoch's record."""
    cfg, d, spe = s.cfg, s.dist, s.steps_per_epoch
    first = min(s.state.step, spe)  # a resume override (batch size, limit_batches) may leave fewer steps
    # loss sum, correct, seen on the device (no host sync a step on a GPU); a resumed partial
    # epoch's sums are already global, so rank 0 alone carries them
    sums = torch.tensor(s.state.partial if d.main else no_sums(), dtype=torch.float64, device=s.device)
    finite = torch.ones((), dtype=torch.bool, device=s.device)
    lr = lr_for_step(cfg, epoch * spe + min(first, spe - 1), spe, s.state.end_step, run_moves(s))
    start, seen0 = time.perf_counter(), s.state.partial[SEEN]
    size = train_size(s, epoch) if head is None else 0
    loader = s.loaders["train"] if head is None else head.loader(epoch)
    # the first step at which the whitening stem's bias stays where it is (model.whiten_bias_epochs)
    whiten_stop = math.ceil(cfg.model.whiten_bias_epochs * spe) if cfg.model.whiten_bias_epochs else None
    hooks.epoch_begin(s, epoch, first)
    i = first - 1  # the last step done (a resume at the epoch's end has none left)
    for i, (x, y) in enumerate(loader.epoch(epoch, start=first, size=size), start=first):
        step = epoch * spe + i
        lr = lr_for_step(cfg, step, spe, s.state.end_step, run_moves(s))
        if whiten_stop is not None and step >= whiten_stop:
            stop_whiten_bias(s)
        if len(y):  # a streamed batch whose images were all bad trains nothing, but is still a step
            logits, loss_sum = train_step(s, x, y, lr, s.loaders["train"].global_batch(i), head=head)
            if s.ema is not None:
                ema_step(s, step)
            finite &= torch.isfinite(loss_sum.detach())
            s.task.tally(sums, logits.detach(), loss_sum.detach(), y)
            hooks.batch_end(s, {"epoch": epoch, "step": step, "step_in_epoch": i, "lr": lr,
                                "loss": loss_sum.detach() / len(y), "sums": sums, "seen0": seen0, "started": start})
        if (end := hooks.step_end(s, step)) is not None:
            s.state.end_step, s.state.end_moves = end
        if i % FINITE_CHECK_EVERY == FINITE_CHECK_EVERY - 1:  # the same steps on every rank: a collective
            check_finite(s, finite, epoch, i)
        last = min(spe, run_end(s) - epoch * spe) - 1  # the run may end inside this epoch
        stop = hooks.stop_requested(s, i)
        periodic = cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0
        if (periodic or stop is not None) and i < last:  # at the epoch's last step, the epoch end saves
            check_finite(s, finite, epoch, i)
            hooks.save_position(s, epoch, i + 1, sums)
            if stop is not None:
                raise Preempted(stop, s.run_dir, epoch, i + 1)
        if i >= last:
            break
    seconds = time.perf_counter() - start
    if s.ema is not None and cfg.train.lookahead:  # the epoch ends on the slow weights (airbench's)
        s.ema.pull(s.model)
    check_finite(s, finite, epoch, i)
    hooks.steps_done(s, epoch)
    loss_sum, correct, seen = distributed.all_sum(sums, d).tolist()
    seen_max = max(seen, 1.0)
    return {"epoch": epoch + 1, "step": epoch * spe + i + 1, "lr": lr, "train_loss": loss_sum / seen_max,
            s.task.train_key: correct / seen_max,
            "train_images": int(seen),  # summed over ranks, bad images left out
            "images_per_s": (seen - seen0) / max(seconds, 1e-9),
            "seconds": round(seconds, 2), "size": size or s.data.image_size}


def stop_whiten_bias(s: Session) -> None:
    """The whitening stem's bias stays where it is from now on (airbench94 trains it for its first 3 epochs):
    its group's rate goes to 0, which the optimiser's state keeps for a resume. Its gradient is still computed:
    turning requires_grad off instead would make torch.compile trace the model again."""
    for group in s.optimizer.param_groups:
        if group.get("whiten_bias"):
            group["lr_scale"] = 0.0


def ema_step(s: Session, step: int) -> None:
    """After optimiser step ``step``: the EMA averages every step, or with train.lookahead every N steps,
    and the weights return to it."""
    every = s.cfg.train.lookahead
    if not every:
        s.ema.update(s.model)
    elif (step + 1) % every == 0:
        s.ema.lookahead(s.model, lookahead_progress(s, step), every)


def lookahead_progress(s: Session, step: int) -> float:
    """The share of the run done after ``step``, by which the lookahead averages more as the run ends (airbench's
    progress**3); 0 within the length-free steps (a pinned rise: stages.length_free), where a time budget's
    correction has not yet set the length, so that they average alike in the run and in the fixed run of its
    final length (the rise's ~1% of averaging is given up)."""
    if step < length_free(s.cfg, s.steps_per_epoch):
        return 0.0
    position, laid = laid_position(step, run_end(s), run_moves(s))
    return (position + 1) / laid


def train_size(s: Session, epoch: int) -> int:
    """The epoch's training image side (train.size_start/size_end); 0: data.image_size."""
    return training_size(epoch, epochs=run_epochs(s), cfg=s.cfg.train, image_size=s.data.image_size)


def _enter_stage(s: Session, epoch: int, hooks: Hooks, head: HeadFeatures | None, *,
                 resumed: bool) -> HeadFeatures | None:
    """Train mode; with stages, freeze and set rates when a stage begins (or on resume inside one).
    Returns the head's precomputed inputs while a precompute stage trains (else None)."""
    cfg = s.cfg
    s.model.train()
    if not cfg.stages:
        return None
    index, _ = stage_at(cfg, epoch)
    if resumed or stage_at(cfg, epoch - 1)[0] != index:
        hooks.say(apply_stage(s.model, s.optimizer, cfg, index))
        head = None
        if cfg.stages[index].precompute:
            if s.dist.enabled:  # the head would step without DDP's gradient averaging
                raise UserError(f"stages[{index}].precompute trains in one process: run this stage without "
                                "torchrun, or set precompute: false")
            head = HeadFeatures(s, index, hooks.say)
    freeze_bn_statistics(s.model, cfg, index)
    return head


def check_finite(s: Session, finite: torch.Tensor, epoch: int, i: int) -> None:
    if distributed.any_rank(not bool(finite), s.dist, s.device):
        last = s.run_dir / rf.LAST
        # a finished epoch is in last.pt, or is written there as the run stops (run/saving.py)
        written = last.exists() or s.state.history
        kept = f"the last good checkpoint is {last}" if written else "no checkpoint was written"
        raise NonFiniteLoss(
            f"loss became NaN or infinite in epoch {epoch + 1} by step {i + 1}; training stopped and {kept}; "
            "lower optim.lr or set optim.grad_clip_norm"
        )


def monitor_metrics(s: Session, split: str) -> dict:
    """train.monitor: ``split``'s loss and top-1 (mAP) of the weights val scores, as <split>_loss and so on."""
    scored = val_metrics_of(s, split)
    return {f"{split}_{k.removeprefix('val_')}": v for k, v in scored.items() if not k.endswith("_raw")}


def val_metrics(s: Session) -> dict:
    """The epoch's val figures (loss and the task's scores) of the weights best.pt, early stopping and
    predict use: the EMA weights when there are any. One pass: the raw weights' ``val_*_raw`` only
    with train.eval_raw."""
    return val_metrics_of(s, "val")


def val_metrics_of(s: Session, split: str) -> dict:
    """val_metrics() of any split, under the val_* keys, with the pass's val_images_per_s (a time budget's
    correction reads how fast the run infers)."""
    if s.ema is None:
        return _val_keys(s, score_split(s, split))
    out = _val_keys(s, score_split(s, split, model=s.ema.module))
    if s.cfg.train.eval_raw and split == "val":
        raw = s.task.val_keys(score_split(s, split))
        out = {**{f"{k}_raw": v for k, v in raw.items()}, **out}
    return out


def _val_keys(s: Session, scored: dict) -> dict:
    return {**s.task.val_keys(scored), "val_images_per_s": scored["images_per_s"]}


def score_split(s: Session, split: str, model=None) -> dict:
    """A split's metrics during training, from the session's own loader (evaluate.evaluator's
    evaluate_split scores a finished run, with figures and calibration). Each rank infers its shard of
    every batch, so each image counts once. Single-label: loss, top-1 and top-5 summed on the device,
    over ranks, and read back once (n, loss, top1, top5); multi-label: the gathered logits scored whole."""
    how = dict(mean=s.mean, std=s.std, device=s.device, precision=s.precision,
               channels_last=s.cfg.train.channels_last, num_classes=len(s.data.classes))
    start = time.perf_counter()
    if s.task.scores_on_device:
        sums = infer_sums(model or s.model, s.loaders[split].epoch(0), s.task.batch_scores, **how)
        *sums, n = distributed.all_sum(sums, s.dist).tolist()  # the one host sync
        result = s.task.scores(sums, int(n))
    else:
        out = infer(model or s.model, s.loaders[split].epoch(0), **how)
        logits, labels = distributed.gather_cat(out.logits, s.dist), distributed.gather_cat(out.labels, s.dist)
        result = s.task.metrics(logits, labels, s.data.classes)
    result["images_per_s"] = result["n"] / max(time.perf_counter() - start, 1e-9)
    return result


def epochs_without_gain(history: list[dict], min_delta: float) -> int:
    """Epochs since the val score (top-1, or multi-label mAP) last beat its running best by more than
    ``min_delta`` (from the history alone, so a resumed run counts the same)."""
    best, since = -math.inf, 0
    for h in history:
        score = val_score(h)
        if score is None or math.isnan(score):
            continue
        best, since = (score, 0) if score > best + min_delta else (best, since + 1)
    return since


def early_stop(s: Session, hooks: Hooks) -> bool:
    """True (and one line) when train.early_stop_patience epochs passed without a val score gain."""
    patience, delta = s.cfg.train.early_stop_patience, s.cfg.train.early_stop_min_delta
    if not patience or epochs_without_gain(s.state.history, delta) < patience:
        return False
    hooks.say(f"early stop after epoch {len(s.state.history)}: val {s.task.score_name} has not gained more than "
              f"{100 * delta:g} points for {patience} epochs; best {100 * s.state.best_score:.2f}% is in best.pt")
    return True
