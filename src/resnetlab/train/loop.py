"""fit(): the training loop, on one screen, with a few named callbacks.

Callbacks (minGPT style), ``{event: [fn, ...]}``: ``on_batch_end(session, info)``,
``on_epoch_end(session, record)``, ``on_train_end(session, result)``. They observe; the
loop does not depend on them. After the last epoch fit() finishes the run the same way
the command line does (train/finish.py): the test split scored once, calibration,
figures and report.html.
"""

from __future__ import annotations

import difflib
import itertools
import math
import time
from collections import defaultdict
from typing import Callable

import torch
from rich.console import Console

from resnetlab import run_folder as rf
from resnetlab.errors import UserError
from resnetlab.evaluate.inference import infer
from resnetlab.evaluate.metrics import metrics
from resnetlab.io import write_json
from resnetlab.train import distributed
from resnetlab.train.budget import report_budget
from resnetlab.train.correction import LengthCorrection
from resnetlab.train.figures import Curves
from resnetlab.train.finish import finish_run
from resnetlab.train.precompute import HeadFeatures
from resnetlab.train.progress import EpochProgress, announce, epoch_line, split_score
from resnetlab.train.saving import save_epoch, save_partial
from resnetlab.train.session import CORRECT, LOSS, SEEN, Session, no_sums, val_score
from resnetlab.train.sizes import training_size
from resnetlab.train.stopping import (NonFiniteLoss, Preempted, StopTraining, run_status, signal_name, stop_agreed,
                                     stop_on_signals)
from resnetlab.train.stages import apply_stage, freeze_bn_statistics, lr_for_step, run_steps, stage_at
from resnetlab.train.step import train_step
from resnetlab.train.tensorboard import TensorBoardLogger

Callback = Callable[..., None]
EVENTS = ("on_batch_end", "on_epoch_end", "on_train_end")
FINITE_CHECK_EVERY = 50  # steps between NaN checks: each is a host sync (and a collective under torchrun)


def fit(s: Session, callbacks: dict[str, list[Callback]] | None = None, console: Console | None = None) -> dict:
    console = console or Console(soft_wrap=True, quiet=not s.dist.main)  # rank 0 speaks for all ranks
    hooks = check_callbacks(callbacks)
    first, t = s.state.epoch, s.cfg.train  # a resume continues at the epoch its checkpoint names
    if first >= t.epochs or first * s.steps_per_epoch + s.state.step >= run_steps(s.cfg, s.steps_per_epoch):
        resume = (f" and reached train.max_steps={t.max_steps}; resume with train.max_steps=0 and" if t.max_steps
                  else "; resume with")
        raise UserError(f"nothing to train: {s.run_dir} has finished {first} of train.epochs={t.epochs}{resume} "
                        f"train.epochs={first + 1} or more, or score it with resnetlab evaluate")
    for key in ("early_stop_patience", "score_untrained"):
        if getattr(t, key) and "val" not in s.loaders:
            raise UserError(f"train.{key} needs a validation split to watch: set data.val_fraction=0.1")
    if t.monitor and t.monitor not in s.loaders:
        raise UserError(f"train.monitor={t.monitor}: the data has no {t.monitor} split to watch; set "
                        f"data.{t.monitor}_fraction=0.1 or leave train.monitor empty")
    if s.dist.main and s.cfg.train.tensorboard:  # first, so an epoch is logged even if a later callback stops the run
        for event, fns in TensorBoardLogger(s).callbacks().items():
            hooks[event] = fns + hooks[event]
    with run_status(s), EpochProgress(s, console) as progress, stop_on_signals() as stop:
        announce(s, console)
        if t.score_untrained and first == 0 and s.state.step == 0:  # a resume has trained already
            score_untrained(s, console)
        curves = Curves(s.run_dir / rf.CURVES)
        try:
            correction = LengthCorrection(s) if s.plan is not None and s.plan.correct_at else None
            for epoch in itertools.takewhile(lambda e: epoch_runs(s, e), itertools.count(first)):
                if stop_agreed(s, stop):  # came in the previous epoch's last step
                    raise Preempted(signal_name(stop), s.run_dir, epoch, 0)
                _enter_stage(s, epoch, console, resumed=epoch == first)
                record = train_epoch(s, epoch, progress, stop, hooks, correction)
                if "val" in s.loaders:
                    record.update(val_metrics(s))
                if t.monitor:  # watched, never chosen on: val_score reads val keys only
                    record.update(monitor_metrics(s, t.monitor))
                improved = s.state.end_epoch(record)  # the state now points at the next epoch's start
                save_epoch(s, record, improved, curves)  # metrics first, then checkpoints: a kill repeats this epoch
                if s.dist.main:
                    console.print(epoch_line(s, record, improved))
                for fn in hooks["on_epoch_end"]:
                    fn(s, record)
                if early_stop(s, console):
                    break
        except (Preempted, StopTraining, KeyboardInterrupt):
            if s.dist.main:
                curves.update(s.state.history, final=True)
            raise
        if s.dist.main:
            curves.update(s.state.history, final=True)
        trained_at = time.monotonic()
        result = finish_run(s, console)
        if s.plan is not None:
            report_budget(s, console, trained_at=trained_at)
        for fn in hooks["on_train_end"]:
            fn(s, result)
    return result


def train_epoch(s: Session, epoch: int, progress: EpochProgress, stop: list[str], hooks,
                correction: LengthCorrection | None = None) -> dict:
    """One pass over the training split from the state's step (0 unless resumed mid-epoch); returns the
    epoch's record."""
    cfg, d, spe = s.cfg, s.dist, s.steps_per_epoch
    first = min(s.state.step, spe)  # a resume override (batch size, limit_batches) may leave fewer steps
    # loss sum, correct, seen on the device (no host sync a step on a GPU); a resumed partial
    # epoch's sums are already global, so rank 0 alone carries them
    sums = torch.tensor(s.state.partial if d.main else no_sums(), dtype=torch.float64, device=s.device)
    finite = torch.ones((), dtype=torch.bool, device=s.device)
    lr = lr_for_step(cfg, epoch * spe + min(first, spe - 1), spe)
    start, seen0 = time.perf_counter(), s.state.partial[SEEN]
    size = train_size(s, epoch) if s.precomputed is None else 0
    loader = s.loaders["train"] if s.precomputed is None else s.precomputed.loader(epoch)
    progress.start(epoch, completed=first)
    i = first - 1  # the last step done (a resume at the epoch's end has none left)
    for i, (x, y) in enumerate(loader.epoch(epoch, start=first, size=size), start=first):
        step = epoch * spe + i
        lr = lr_for_step(cfg, step, spe)
        if len(y):  # a streamed batch whose images were all bad trains nothing, but is still a step
            logits, loss_sum = train_step(s, x, y, lr, s.loaders["train"].global_batch(i))
            if s.ema is not None:
                s.ema.update(s.model)
            tally(sums, finite, logits.detach(), loss_sum.detach(), y, multi_label=s.multi_label)
            progress.update(i, sums, seen0, start)
            for fn in hooks["on_batch_end"]:
                fn(s, {"epoch": epoch, "step": step, "step_in_epoch": i, "lr": lr, "loss": loss_sum.detach() / len(y)})
        if i % FINITE_CHECK_EVERY == FINITE_CHECK_EVERY - 1:  # the same steps on every rank: a collective
            check_finite(s, finite, epoch, i)
        if correction is not None and (line := correction.step_done(step)):  # the budget's one look at its clock
            progress.say(line)
        last = min(spe, run_steps(cfg, spe) - epoch * spe) - 1  # train.max_steps may end the run inside this epoch
        stop_now = stop_agreed(s, stop, i)
        periodic = cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0
        if (periodic or stop_now) and i < last:  # at the epoch's last step, the epoch end saves
            check_finite(s, finite, epoch, i)
            save_partial(s, epoch, i + 1, sums)
            if stop_now:
                raise Preempted(signal_name(stop), s.run_dir, epoch, i + 1)
        if i >= last:
            break
    seconds = time.perf_counter() - start
    check_finite(s, finite, epoch, i)
    progress.stop()
    loss_sum, correct, seen = distributed.all_sum(sums, d).tolist()
    seen_max = max(seen, 1.0)
    return {"epoch": epoch + 1, "step": epoch * spe + i + 1, "lr": lr, "train_loss": loss_sum / seen_max,
            "train_exact" if s.multi_label else "train_top1": correct / seen_max,
            "train_images": int(seen),  # summed over ranks, bad images left out
            "images_per_s": (seen - seen0) / max(seconds, 1e-9),
            "seconds": round(seconds, 2), "size": size or s.data.image_size}


def epoch_runs(s: Session, epoch: int) -> bool:
    """``epoch`` is within train.epochs and begins before the run's last step (train.max_steps). Read
    at each epoch: a time budget may correct both once, mid-run (train/correction.py)."""
    return epoch < s.cfg.train.epochs and epoch * s.steps_per_epoch < run_steps(s.cfg, s.steps_per_epoch)


def train_size(s: Session, epoch: int) -> int:
    """The epoch's training image side (train.size_start/size_end); 0: data.image_size."""
    return training_size(epoch, epochs=s.cfg.train.epochs, cfg=s.cfg.train, image_size=s.data.image_size)


def tally(sums: torch.Tensor, finite: torch.Tensor, logits: torch.Tensor, loss_sum: torch.Tensor,
          y: torch.Tensor, *, multi_label: bool = False) -> None:
    """Add a step to the epoch's running sums (loss, correct, seen) on the device: no host sync.
    Multi-label 'correct' is an exact match of the whole label set at probability 0.5 (logit 0)."""
    finite &= torch.isfinite(loss_sum)
    sums[LOSS] += loss_sum
    if multi_label:  # a mixed target counts a label present when its share is over 1/2
        sums[CORRECT] += ((logits > 0) == (y > 0.5)).all(1).sum()
    else:
        sums[CORRECT] += (logits.argmax(1) == (y.argmax(1) if y.ndim == 2 else y)).sum()  # mixed: the larger share
    sums[SEEN] += len(y)


def check_callbacks(callbacks: dict[str, list[Callback]] | None) -> defaultdict:
    """The callbacks by event; an unknown event name is an error (a typo would never be called)."""
    for name in callbacks or {}:
        if name not in EVENTS:
            near = difflib.get_close_matches(name, EVENTS, n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise UserError(f"unknown callback event '{name}': {hint}events are {', '.join(EVENTS)}")
    return defaultdict(list, callbacks or {})


def _enter_stage(s: Session, epoch: int, console: Console, *, resumed: bool) -> None:
    """Train mode; with stages, freeze and set rates when a stage begins (or on resume inside one)."""
    cfg = s.cfg
    s.model.train()
    if not cfg.stages:
        return
    index, _ = stage_at(cfg, epoch)
    if resumed or stage_at(cfg, epoch - 1)[0] != index:
        console.print(apply_stage(s.model, s.optimizer, cfg, index))
        s.precomputed = None
        if cfg.stages[index].precompute:
            if s.dist.enabled:  # the head would step without DDP's gradient averaging
                raise UserError(f"stages[{index}].precompute trains in one process: run this stage without "
                                "torchrun, or set precompute: false")
            s.precomputed = HeadFeatures(s, index, console)
    freeze_bn_statistics(s.model, cfg, index)


def check_finite(s: Session, finite: torch.Tensor, epoch: int, i: int) -> None:
    if distributed.any_rank(not bool(finite), s.dist, s.device):
        last = s.run_dir / rf.LAST
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
        raise NonFiniteLoss(
            f"loss became NaN or infinite in epoch {epoch + 1} by step {i + 1}; training stopped and {kept}; "
            "lower optim.lr or set optim.grad_clip_norm"
        )


def score_untrained(s: Session, console: Console) -> None:
    """train.score_untrained: val scored before the first step, printed and kept in untrained.json."""
    record = val_metrics(s)
    if s.dist.main:
        write_json(s.run_dir / rf.UNTRAINED, record)
        console.print(f"before training: {split_score(record, 'val')} (n={len(s.data.splits['val'])})")


def monitor_metrics(s: Session, split: str) -> dict:
    """train.monitor: ``split``'s loss and top-1 (mAP) of the weights val scores, as <split>_loss and so on."""
    scored = val_metrics_of(s, split)
    return {f"{split}_{k.removeprefix('val_')}": v for k, v in scored.items() if not k.endswith("_raw")}


def val_metrics(s: Session) -> dict:
    """The epoch's val figures (loss, top-1/top-5; multi-label: loss, mAP macro and micro) of the
    weights best.pt, early stopping and predict use: the EMA weights when there are any. One pass:
    the raw weights' ``val_*_raw`` only with train.eval_raw."""
    return val_metrics_of(s, "val")


def val_metrics_of(s: Session, split: str) -> dict:
    """val_metrics() of any split, under the val_* keys."""
    if s.ema is None:
        return _val_keys(score_split(s, split), s.multi_label)
    out = _val_keys(score_split(s, split, model=s.ema.module), s.multi_label)
    if s.cfg.train.eval_raw and split == "val":
        raw = _val_keys(score_split(s, split), s.multi_label)
        out = {**{f"{k}_raw": v for k, v in raw.items()}, **out}
    return out


def _val_keys(result: dict, multi_label: bool) -> dict:
    if multi_label:
        return {"val_loss": result["loss"], "val_map": result["map_macro"], "val_map_micro": result["map_micro"]}
    return {"val_loss": result["loss"], "val_top1": result["top1"], "val_top5": result["top5"]}


def score_split(s: Session, split: str, model=None) -> dict:
    """A split's metrics during training, from the session's own loader (evaluate.evaluator's
    evaluate_split scores a finished run, with figures and calibration). Each rank infers its shard of
    every batch; the shards are gathered, so each image counts once."""
    out = infer(model or s.model, s.loaders[split].epoch(0), mean=s.mean, std=s.std, device=s.device,
                precision=s.precision, channels_last=s.cfg.train.channels_last, num_classes=len(s.data.classes))
    logits, labels = distributed.gather_cat(out.logits, s.dist), distributed.gather_cat(out.labels, s.dist)
    if s.multi_label:
        from resnetlab.evaluate.multilabel import multilabel_metrics

        result = multilabel_metrics(logits, labels, s.data.classes)
    else:
        result = metrics(logits, labels, s.data.classes)
    result["images_per_s"] = len(labels) / max(out.seconds, 1e-9)
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


def early_stop(s: Session, console: Console) -> bool:
    """True (and one line) when train.early_stop_patience epochs passed without a val top-1 gain."""
    patience, delta = s.cfg.train.early_stop_patience, s.cfg.train.early_stop_min_delta
    if not patience or epochs_without_gain(s.state.history, delta) < patience:
        return False
    metric = "mAP" if s.multi_label else "top-1"
    console.print(f"early stop after epoch {len(s.state.history)}: val {metric} has not gained more than {100 * delta:g} "
                  f"points for {patience} epochs; best {100 * s.state.best_top1:.2f}% is in best.pt")
    return True
