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

from resnetlab.checkpoint import load_checkpoint, save_checkpoint
from resnetlab.data.augment import normalize
from resnetlab.errors import UserError
from resnetlab.evaluate import infer, metrics
from resnetlab.plots import training_curves
from resnetlab.runs import write_confusion_csv, write_json, write_metrics, write_skipped
from resnetlab.runtime import autocast
from resnetlab.schedules import lr_at
from resnetlab.session import Session, checkpoint_state

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
    cfg, console = s.cfg, console or Console(soft_wrap=True)
    hooks = defaultdict(list, callbacks or {})
    spe, epochs = s.steps_per_epoch, cfg.train.epochs
    total = spe * epochs
    write_skipped(s.run_dir, s.data.skipped)
    if s.data.skipped:
        console.print(f"skipped {len(s.data.skipped)} bad images: see {s.run_dir / 'skipped_images.csv'}")
    console.print(
        f"training {cfg.model.name} on {len(s.data.splits['train'])} images "
        f"({s.data.image_size} px, {len(s.data.classes)} classes) for {epochs} epochs on "
        f"{s.device} in {s.precision}; run folder {s.run_dir}"
    )
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:5.1f}%  {task.fields[ips]:.0f} img/s"),
        TimeRemainingColumn(), console=console, transient=True, disable=not cfg.train.progress,
    )
    with progress, _stop_on_signals() as stop:
        for epoch in range(s.start_epoch, epochs):
            if stop:  # arrived during the last step of the previous epoch, which is saved
                raise Preempted(stop[0], s.run_dir, epoch, 0)
            s.model.train()
            task = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=spe, completed=s.start_step, loss=0, acc=0, ips=0)
            sums = torch.tensor(s.partial, dtype=torch.float64, device=s.device)  # loss sum, correct, seen
            finite = torch.ones((), dtype=torch.bool, device=s.device)
            start, seen0, last_ui = time.perf_counter(), sums[2].item(), 0.0
            for i, (x, y) in enumerate(s.loaders["train"].epoch(epoch, start=s.start_step), start=s.start_step):
                step = epoch * spe + i
                lr = lr_at(step, base_lr=cfg.optim.lr, total_steps=total, steps_per_epoch=spe, cfg=cfg.schedule)
                for group in s.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                with autocast(s.device, s.precision):
                    logits = s.model(normalize(x, s.mean, s.std, channels_last=cfg.train.channels_last))
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.optim.label_smoothing)
                s.optimizer.zero_grad(set_to_none=True)
                _backward_step(s, loss)
                with torch.no_grad():  # accumulate on the device: no host sync per step on a GPU
                    finite &= torch.isfinite(loss)
                    sums[0] += loss.detach() * len(y)
                    sums[1] += (logits.argmax(1) == y).sum()
                    sums[2] += len(y)
                now = time.perf_counter()
                if now - last_ui > 0.5 or i == spe - 1:
                    _check_finite(s, finite, epoch, i)
                    n = sums[2].item()
                    progress.update(task, completed=i + 1, loss=sums[0].item() / n, acc=100 * sums[1].item() / n,
                                    ips=(n - seen0) / max(now - start, 1e-9))
                    last_ui = now
                for fn in hooks["on_batch_end"]:
                    fn(s, {"epoch": epoch, "step": step, "step_in_epoch": i, "lr": lr, "loss": loss})
                periodic = cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0
                if (periodic or stop) and i < spe - 1:  # at the epoch's last step, the epoch end saves
                    _check_finite(s, finite, epoch, i)
                    save_checkpoint(s.run_dir / "last.pt", checkpoint_state(s, epoch=epoch, step=i + 1, partial=sums.tolist()))
                    if stop:
                        raise Preempted(stop[0], s.run_dir, epoch, i + 1)
            seconds = time.perf_counter() - start
            _check_finite(s, finite, epoch, spe - 1)
            progress.remove_task(task)
            loss_sum, correct, seen = sums.tolist()
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
    if not bool(finite):
        last = s.run_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
        raise NonFiniteLoss(
            f"loss became NaN or infinite in epoch {epoch + 1} by step {i + 1}; training stopped and {kept}; "
            "lower optim.lr or set optim.grad_clip_norm"
        )


def _evaluate(s: Session, split: str) -> dict:
    out = infer(s.model, s.loaders[split].epoch(0), mean=s.mean, std=s.std, device=s.device,
                precision=s.precision, channels_last=s.cfg.train.channels_last)
    result = metrics(out.logits, out.labels, s.data.classes)
    result["images_per_s"] = out.images_per_second
    return result


def _end_of_epoch(s: Session, record: dict, console: Console) -> None:
    """Metrics and curves first, then checkpoints: a kill in between only repeats this epoch."""
    streamed = getattr(s.loaders["train"], "skipped", {})  # bad files found by streaming workers
    if streamed:
        known = {p for p, _ in s.data.skipped}
        s.data.skipped += [(p, r) for p, r in streamed.items() if p not in known]
        write_skipped(s.run_dir, s.data.skipped)
    write_metrics(s.run_dir, s.history)
    training_curves(s.history, s.run_dir / "curves.png")
    state = checkpoint_state(s, epoch=record["epoch"], step=0, partial=[0.0, 0.0, 0.0])
    score = record.get("val_top1", record["train_top1"] if "val" not in s.loaders else -1.0)
    improved = not math.isnan(score) and score > s.best_top1
    if improved:
        s.best_top1 = state["best_top1"] = score
    save_checkpoint(s.run_dir / "last.pt", state)
    if improved or not (s.run_dir / "best.pt").exists():
        save_checkpoint(s.run_dir / "best.pt", state)
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
    write_json(s.run_dir / "eval_test.json", result)
    write_confusion_csv(s.run_dir / "confusion_test.csv", result["confusion"], s.data.classes)
    console.print(
        f"test top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  loss {result['loss']:.4f}  "
        f"(n={result['n']}, {result['images_per_s']:.0f} img/s)"
    )
    console.print(f"run folder: {s.run_dir}")
    return {"run_dir": str(s.run_dir), "test": result}
