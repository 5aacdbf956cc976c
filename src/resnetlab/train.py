"""fit(): the training loop, on one screen, with a few named callbacks.

Callbacks (minGPT style): ``on_batch_end(session, info)``, ``on_epoch_end(session,
record)``, ``on_train_end(session, result)``. They observe; the loop does not
depend on them.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from resnetlab import distributed
from resnetlab.checkpoint import load_checkpoint, save_checkpoint
from resnetlab.data.augment import normalize
from resnetlab.errors import UserError
from resnetlab.evaluate import infer, metrics
from resnetlab.plots import training_curves
from resnetlab.runs import write_confusion_csv, write_json, write_metrics, write_skipped
from resnetlab.runtime import autocast
from resnetlab.session import Session, checkpoint_state
from resnetlab.stages import apply_stage, freeze_bn_statistics, lr_for_step, snapshot_epochs, stage_at

Callback = Callable[..., None]
EVENTS = ("on_batch_end", "on_epoch_end", "on_train_end")


class NonFiniteLoss(UserError):
    pass


class Preempted(Exception):
    """SIGTERM or SIGINT stopped training at a step boundary; last.pt holds the exact position."""

    exit_code = 75  # EX_TEMPFAIL: "try again later", what a scheduler should requeue

    def __init__(self, signal_name: str, run_dir: Path, epoch: int, step_in_epoch: int):
        super().__init__(
            f"stopped by {signal_name} at epoch {epoch + 1}, step {step_in_epoch}; saved {run_dir / 'last.pt'}; "
            f"continue with: resnetlab train --resume {run_dir}"
        )


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM/SIGINT only set a flag, read at the next step boundary, so the checkpoint written
    then is consistent. A second Ctrl+C interrupts at once (the last checkpoint stays as it was)."""
    requested: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def fit(s: Session, callbacks: dict[str, list[Callback]] | None = None, console: Console | None = None) -> dict:
    cfg, d = s.cfg, s.dist
    console = console or Console(soft_wrap=True, quiet=not d.main)  # rank 0 speaks for all ranks
    hooks = defaultdict(list, callbacks or {})
    spe, epochs = s.steps_per_epoch, cfg.train.epochs
    if d.main:
        write_skipped(s.run_dir, s.data.skipped)
    if s.data.skipped:
        console.print(f"skipped {len(s.data.skipped)} bad images: see {s.run_dir / 'skipped_images.csv'}")
    for note in s.data.notes:
        console.print(f"note: {note}")
    console.print(s.data.balance())
    console.print(
        f"training {cfg.model.name} on {len(s.data.splits['train'])} images "
        f"({s.data.image_size} px, {len(s.data.classes)} classes) for {epochs} epochs on "
        f"{s.device} in {s.precision}{f' x {d.world} processes' if d.enabled else ''}; run folder {s.run_dir}"
    )
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:5.1f}%  {task.fields[ips]:.0f} img/s"),
        TimeRemainingColumn(), console=console, transient=True, disable=not (cfg.train.progress and d.main),
    )
    with progress, _stop_on_signals() as stop:
        for epoch in range(s.start_epoch, epochs):
            if distributed.any_rank(bool(stop), d, s.device):  # came in the previous epoch's last step
                raise Preempted(_signal_name(stop), s.run_dir, epoch, 0)
            if cfg.stages:
                index, _ = stage_at(cfg, epoch)
                if epoch == s.start_epoch or stage_at(cfg, epoch - 1)[0] != index:
                    console.print(apply_stage(s.model, s.optimizer, cfg, index))
            s.model.train()
            if cfg.stages:
                freeze_bn_statistics(s.model, cfg, index)
            task = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=spe, completed=s.start_step, loss=0, acc=0, ips=0)
            # loss sum, correct, seen; a resumed partial epoch's sums are global, so rank 0 alone carries them
            sums = torch.tensor(s.partial if d.main else [0.0] * 3, dtype=torch.float64, device=s.device)
            finite = torch.ones((), dtype=torch.bool, device=s.device)
            start, seen0, last_ui = time.perf_counter(), s.partial[2], 0.0
            for i, (x, y) in enumerate(s.loaders["train"].epoch(epoch, start=s.start_step), start=s.start_step):
                step = epoch * spe + i
                lr = lr_for_step(cfg, step, spe)
                logits, loss_sum = train_step(s, x, y, lr, s.loaders["train"].global_batch(i))
                with torch.no_grad():  # accumulate on the device: no host sync per step on a GPU
                    finite &= torch.isfinite(loss_sum)
                    sums[0] += loss_sum.detach()
                    sums[1] += (logits.argmax(1) == y).sum()
                    sums[2] += len(y)
                now = time.perf_counter()
                if d.main and (now - last_ui > 0.5 or i == spe - 1):  # live display: rank 0's share
                    n = max(sums[2].item(), 1)
                    progress.update(task, completed=i + 1, loss=sums[0].item() / n, acc=100 * sums[1].item() / n,
                                    ips=d.world * (n - seen0) / max(now - start, 1e-9))
                    last_ui = now
                for fn in hooks["on_batch_end"]:
                    fn(s, {"epoch": epoch, "step": step, "step_in_epoch": i, "lr": lr, "loss": loss_sum / len(y)})
                if i % 50 == 49:  # at the same steps on every rank, since it is a collective
                    _check_finite(s, finite, epoch, i)
                stop_now = distributed.any_rank(bool(stop), d, s.device)
                periodic = cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0
                if (periodic or stop_now) and i < spe - 1:  # at the epoch's last step, the epoch end saves
                    _check_finite(s, finite, epoch, i)
                    partial = distributed.all_sum(sums.clone(), d).tolist()
                    if d.main:
                        save_checkpoint(s.run_dir / "last.pt", checkpoint_state(s, epoch=epoch, step=i + 1, partial=partial))
                    if stop_now:
                        raise Preempted(_signal_name(stop), s.run_dir, epoch, i + 1)
            seconds = time.perf_counter() - start
            _check_finite(s, finite, epoch, spe - 1)
            progress.remove_task(task)
            loss_sum, correct, seen = distributed.all_sum(sums, d).tolist()
            record = {"epoch": epoch + 1, "step": (epoch + 1) * spe, "lr": lr, "train_loss": loss_sum / seen,
                      "train_top1": correct / seen, "images_per_s": (seen - seen0) / seconds, "seconds": round(seconds, 2)}
            if "val" in s.loaders:
                result = _evaluate(s, "val")
                record.update(val_loss=result["loss"], val_top1=result["top1"], val_top5=result["top5"])
            s.history.append(record)
            s.start_step, s.partial = 0, [0.0, 0.0, 0.0]
            _end_of_epoch(s, record, console)
            for fn in hooks["on_epoch_end"]:
                fn(s, record)
    result = _final_test(s, console)
    for fn in hooks["on_train_end"]:
        fn(s, result)
    return result


def _signal_name(stop: list[str]) -> str:
    return stop[0] if stop else "another rank's signal"


def train_step(s: Session, x: torch.Tensor, y: torch.Tensor, lr: float, n_global: int):
    """One optimiser step at head rate ``lr``; returns (logits, summed loss) of this rank's images."""
    for group in s.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    with autocast(s.device, s.precision):
        logits = s.net(normalize(x, s.mean, s.std, channels_last=s.cfg.train.channels_last))
    loss_sum = F.cross_entropy(logits.float(), y, weight=s.class_weights,
                               label_smoothing=s.cfg.optim.label_smoothing, reduction="sum")
    s.optimizer.zero_grad(set_to_none=True)
    # sum over this rank's images / images in the global batch, x ranks because DDP averages
    # gradients over ranks: the gradient is the global batch mean for any rank count
    _backward_step(s, loss_sum * (s.dist.world / n_global))
    return logits, loss_sum


def _backward_step(s: Session, loss: torch.Tensor) -> None:
    clip = s.cfg.optim.grad_clip_norm
    if s.scaler is not None:  # fp16: scale the loss so small gradients do not flush to zero
        s.scaler.scale(loss).backward()
        if clip:
            s.scaler.unscale_(s.optimizer)
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        return
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), clip)
    s.optimizer.step()


def _check_finite(s: Session, finite: torch.Tensor, epoch: int, i: int) -> None:
    if distributed.any_rank(not bool(finite), s.dist, s.device):
        last = s.run_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
        raise NonFiniteLoss(
            f"loss became NaN or infinite in epoch {epoch + 1} by step {i + 1}; training stopped and {kept}; "
            "lower optim.lr or set optim.grad_clip_norm"
        )


def _evaluate(s: Session, split: str) -> dict:
    """Each rank infers its shard of every batch; the shards are gathered, so each image counts once."""
    out = infer(s.model, s.loaders[split].epoch(0), mean=s.mean, std=s.std, device=s.device,
                precision=s.precision, channels_last=s.cfg.train.channels_last)
    logits, labels = distributed.gather_cat(out.logits, s.dist), distributed.gather_cat(out.labels, s.dist)
    result = metrics(logits, labels, s.data.classes)
    result["images_per_s"] = len(labels) / max(out.seconds, 1e-9)
    return result


def _end_of_epoch(s: Session, record: dict, console: Console) -> None:
    """Metrics and curves first, then checkpoints: a kill in between only repeats this epoch."""
    score = record.get("val_top1", record["train_top1"] if "val" not in s.loaders else -1.0)
    improved = not math.isnan(score) and score > s.best_top1
    if improved:
        s.best_top1 = score
    if not s.dist.main:
        distributed.barrier(s.dist)  # the others wait until rank 0 has written the checkpoints
        return
    streamed = getattr(s.loaders["train"], "skipped", {})  # bad files found by streaming workers
    if streamed:
        known = {p for p, _ in s.data.skipped}
        s.data.skipped += [(p, r) for p, r in streamed.items() if p not in known]
        write_skipped(s.run_dir, s.data.skipped)
    write_metrics(s.run_dir, s.history)
    training_curves(s.history, s.run_dir / "curves.png")
    state = checkpoint_state(s, epoch=record["epoch"], step=0, partial=[0.0, 0.0, 0.0])
    save_checkpoint(s.run_dir / "last.pt", state)
    if improved or not (s.run_dir / "best.pt").exists():
        save_checkpoint(s.run_dir / "best.pt", state)
    snapshots = sorted(snapshot_epochs(s.cfg))
    if record["epoch"] in snapshots:  # the end of an SGDR cycle: a model for snapshot ensembling
        save_checkpoint(s.run_dir / f"snapshot-{snapshots.index(record['epoch']) + 1}.pt", state)
    distributed.barrier(s.dist)
    line = (f"epoch {record['epoch']:>3}/{s.cfg.train.epochs}  lr {record['lr']:.2e}  "
            f"train loss {record['train_loss']:.4f} top-1 {100 * record['train_top1']:.2f}%")
    if "val_top1" in record:
        line += f"  val loss {record['val_loss']:.4f} top-1 {100 * record['val_top1']:.2f}%"
    line += f"  {record['images_per_s']:.0f} img/s  {record['seconds']:.1f} s"
    console.print(line + ("  *" if improved and "val_top1" in record else ""))


def _final_test(s: Session, console: Console) -> dict:
    """Test once, with the checkpoint chosen on validation (or the last one without validation)."""
    if "test" not in s.loaders:
        console.print(f"done; no test split in this data set. Run folder: {s.run_dir}")
        return {"run_dir": str(s.run_dir)}
    if "val" in s.loaders and (s.run_dir / "best.pt").exists():
        s.model.load_state_dict(load_checkpoint(s.run_dir / "best.pt")["model"])
    result = _evaluate(s, "test")
    result["checkpoint"] = "best.pt" if "val" in s.loaders else "last.pt"
    if s.dist.main:
        write_json(s.run_dir / "eval_test.json", result)
        write_confusion_csv(s.run_dir / "confusion_test.csv", result["confusion"], s.data.classes)
    console.print(
        f"test top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}  "
        f"(n={result['n']}, {result['images_per_s']:.0f} img/s)"
    )
    console.print(f"run folder: {s.run_dir}")
    return {"run_dir": str(s.run_dir), "test": result}
