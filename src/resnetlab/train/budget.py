"""train.time_budget: time the first steps, then set the run's length to fill the budget.

The whole run, from prepare() to the report, should end at the budget:

    budget = so far (data, model) + timing + E x (k steps x step time + validation + checkpoint)
             + the test split and report

Steps are timed on throwaway copies of the weights and optimiser (restored afterwards),
so the run that follows is exactly the run ``train.epochs=E train.steps_per_epoch=k`` gives;
with progressive resizing at both the start and the full size, interpolated by pixel count.
E - 1 full epochs and a last stretch would need a partial epoch the schedules cannot express,
so all E epochs take the same k <= full steps (each a random k-batch share of the images).
The plan is written to budget.json and config.yaml, so a resume follows the same plan.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass

import torch
from rich.console import Console

from resnetlab import run_folder as rf
from resnetlab.config import parse_duration, save_config
from resnetlab.errors import UserError
from resnetlab.evaluate.inference import infer
from resnetlab.io import atomic_write_text
from resnetlab.train import distributed
from resnetlab.train.checkpoint import save_checkpoint
from resnetlab.train.sizes import training_size
from resnetlab.train.session import Session, checkpoint_state, no_sums
from resnetlab.train.stages import lr_for_step
from resnetlab.train.step import train_step

REPORT_S = 4.0  # s: figures, calibration and report.html after the test split (measured 2-4 s, 10 classes)
MARGIN = 0.98  # plan to 98% of what is left: timing noise on a shared CPU is a few percent
WARMUP_STEPS = 3  # untimed steps before timing


@dataclass
class Plan:
    budget_s: float
    used_s: float  # before the plan: data, model, timing
    step_s: dict[int, float]  # s a step, by image side in px
    epoch_overhead_s: float  # validation + checkpoint + curves, per epoch
    finish_s: float  # the test split and the report
    epochs: int
    steps: int  # per epoch
    full_steps: int
    predicted_s: float

    def line(self) -> str:
        steps = f"{self.steps} steps" if self.steps == self.full_steps else f"{self.steps} of {self.full_steps} steps"
        rates = ", ".join(f"{1000 * v:.0f} ms a step at {k} px" for k, v in sorted(self.step_s.items()))
        return (f"time budget {_clock(self.budget_s)}: {rates}; {self.epoch_overhead_s:.1f} s to validate and save an "
                f"epoch, ~{self.finish_s:.0f} s for the test and report, {self.used_s:.0f} s used so far: "
                f"{self.epochs} epochs of {steps}, ending at ~{_clock(self.predicted_s)}")


def _clock(seconds: float) -> str:
    m, sec = divmod(round(seconds), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def plan_budget(s: Session, console: Console) -> Plan | None:
    """Set train.epochs and train.steps_per_epoch from train.time_budget (once: a resume keeps the plan)."""
    path = s.run_dir / rf.BUDGET
    if not s.cfg.train.time_budget:
        return None
    if path.exists():  # a resume: the schedule was laid over the planned length, keep it
        console.print(f"time budget: resuming the plan in {path} ({s.cfg.train.epochs} epochs); "
                      "the time before the interruption is not counted again")
        return None
    budget = parse_duration(s.cfg.train.time_budget, "train.time_budget")
    measured = _measure(s)  # every rank steps together (collectives); rank 0's clock decides
    measured = distributed.broadcast_object(measured if s.dist.main else None, s.dist)
    plan = choose(budget, time.monotonic() - s.started, **measured,
                  sizes=lambda epochs: _sizes(s, epochs))
    s.cfg.train.epochs, s.cfg.train.steps_per_epoch = plan.epochs, (0 if plan.steps == plan.full_steps else plan.steps)
    s.loaders["train"].limit(plan.steps)
    if s.dist.main:
        save_config(s.cfg, s.run_dir / rf.CONFIG)
        atomic_write_text(path, json.dumps(asdict(plan), indent=2) + "\n")
    console.print(plan.line())
    return plan


def choose(budget: float, used: float, *, step_s: dict[int, float], epoch_overhead_s: float, finish_s: float,
           full_steps: int, sizes) -> Plan:
    """The most steps that fit: E epochs of k steps, E - 1 full ones at least. ``sizes(E)`` gives
    each epoch's training side in px for an E-epoch run; ``step_s`` is keyed by px."""
    available = MARGIN * (budget - used) - finish_s
    lo, hi = min(step_s), max(step_s)

    def cost(size: int) -> float:  # s a step at ``size`` px, linear in pixels between the measured sizes
        return step_s[hi] if hi == lo else step_s[lo] + (step_s[hi] - step_s[lo]) * (size**2 - lo**2) / (hi**2 - lo**2)

    best = None
    for epochs in range(1, 100_000):
        per_step = sum(cost(z) for z in sizes(epochs))
        k = min(full_steps, math.floor((available - epochs * epoch_overhead_s) / per_step))
        if k < full_steps:
            if best is None:
                need = used + (full_steps * per_step + epoch_overhead_s + finish_s) / MARGIN
                raise UserError(
                    f"time budget {_clock(budget)} is too small for one epoch here: {full_steps} steps take "
                    f"~{full_steps * per_step:.0f} s, validating ~{epoch_overhead_s:.0f} s, the test and report "
                    f"~{finish_s:.0f} s, and {used:.0f} s went to loading and timing; give train.time_budget="
                    f"{_clock(math.ceil(need))} or more, or lower data.image_size or model size")
            if epochs * k > best[0] * best[1]:
                best = (epochs, k)
            break
        best = (epochs, k)
    epochs, k = best
    predicted = used + sum(cost(z) for z in sizes(epochs)) * k + epochs * epoch_overhead_s + finish_s
    return Plan(budget, used, step_s, epoch_overhead_s, finish_s, epochs, k, full_steps, predicted)


def _sizes(s: Session, epochs: int) -> list[int]:
    """Each epoch's training side in px for an ``epochs``-epoch run."""
    return [training_size(e, epochs=epochs, cfg=s.cfg.train, image_size=s.data.image_size) or s.data.image_size
            for e in range(epochs)]


def _measure(s: Session) -> dict:
    """Seconds a training step (at the start and full sizes), per epoch of validation and saving,
    and for the test split and report; the weights and optimiser are put back afterwards."""
    saved = copy.deepcopy((s.model.state_dict(), s.optimizer.state_dict(),
                           s.ema.state_dict() if s.ema else None, s.scaler.state_dict() if s.scaler else None))
    image = s.data.image_size
    try:  # at the first and last epochs' sizes (they differ with progressive resizing)
        step_s = {px: _time_steps(s, 0 if px == image else px) for px in {*_sizes(s, 2)}}
        eval_s = _time_eval(s)  # s an image
        start = time.perf_counter()
        probe = s.run_dir / "budget-probe.pt"
        save_checkpoint(probe, checkpoint_state(s, epoch=0, step=0, partial=no_sums()))
        probe.unlink()
        save_s = 2 * (time.perf_counter() - start)  # last.pt and best.pt (one serialisation, two writes)
    finally:
        model, optimizer, ema, scaler = saved
        s.model.load_state_dict(model)
        s.optimizer.load_state_dict(optimizer)
        if s.ema is not None:
            s.ema.load_state_dict(ema)
        if s.scaler is not None:
            s.scaler.load_state_dict(scaler)
    n = {name: len(split) for name, split in s.data.splits.items()}
    models = 2 if s.ema is not None and s.cfg.train.eval_raw else 1  # train.eval_raw: val scored twice
    views = s.cfg.train.final_tta
    passes = 1 + (views if views > 1 else 0)  # the plain test pass, then the TTA views (the image is one)
    test = n.get("test", 0) * passes if s.cfg.train.final_test else 0
    return {"step_s": step_s, "epoch_overhead_s": n.get("val", 0) * eval_s * models + save_s,
            # the final curves.png (~0.5 s; while training they are redrawn at most once a minute)
            "finish_s": (test + n.get("val", 0)) * eval_s + (REPORT_S if test and s.cfg.train.report else 0.0) + 0.5,
            "full_steps": s.loaders["train"].full_steps if not s.cfg.train.limit_batches else len(s.loaders["train"])}


def _time_steps(s: Session, size: int) -> float:
    """Median seconds of a training step after WARMUP_STEPS untimed ones: at least 5 steps and 3 s,
    at most 30. The first steps after building a model run slow (allocations, convolution
    algorithm choice): timed with one warm-up step, a GTSRB run's steps read 25% slower than the
    run's own and it planned 22% short of its budget."""
    s.model.train()
    times, lr = [], lr_for_step(s.cfg, 0, s.steps_per_epoch)
    start = time.perf_counter()
    for i, (x, y) in enumerate(_endless(s, size)):
        train_step(s, x, y, lr, len(y) * s.dist.world)
        if s.ema is not None:
            s.ema.update(s.model)
        _sync(s)
        now = time.perf_counter()
        if i >= WARMUP_STEPS:
            times.append(now - start)
        start = now
        if len(times) >= 30 or (len(times) >= 5 and sum(times) >= 3):
            break
    return sorted(times)[len(times) // 2]


def _endless(s: Session, size: int):
    """Training batches at ``size``, epoch after epoch (a split may have fewer batches than the timing needs)."""
    epoch = 0
    while True:
        yield from s.loaders["train"].epoch(epoch, size=size)
        epoch += 1


def _time_eval(s: Session) -> float:
    """Seconds an image of inference, from one batch of val (or test); 0 when there is neither."""
    name = next((n for n in ("val", "test") if n in s.loaders), None)
    if name is None:
        return 0.0
    batch = next(iter(s.loaders[name].epoch(0)))
    out = infer(s.model, iter([batch]), mean=s.mean, std=s.std, device=s.device, precision=s.precision,
                channels_last=s.cfg.train.channels_last, num_classes=len(s.data.classes))
    return out.seconds / max(len(out.labels), 1)


def _sync(s: Session) -> None:
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)


def report_budget(s: Session, plan: Plan, console: Console) -> None:
    """How the run kept to its budget, in budget.json and one line."""
    took = time.monotonic() - s.started
    if s.dist.main:
        record = {**asdict(plan), "actual_s": round(took, 2)}
        atomic_write_text(s.run_dir / rf.BUDGET, json.dumps(record, indent=2) + "\n")
    console.print(f"time budget {_clock(plan.budget_s)}: the run took {_clock(took)} ({100 * took / plan.budget_s:.0f}%)")
