"""Timing a rung on this machine: a throwaway session's training steps, an inference batch and a
checkpoint save, from which train.time_budget plans (budget/plan.py)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from resnetlab.checkpoint import save_checkpoint
from resnetlab.config import Config
from resnetlab.data import DataBundle
from resnetlab.evaluate.inference import infer
from resnetlab.train.session import Session, checkpoint_state, smoke_images
from resnetlab.train.sizes import training_size
from resnetlab.train.stages import lr_for_step
from resnetlab.train.step import train_step

WARMUP_STEPS = 3  # untimed steps first: a new model's first steps run slow (allocations, algorithm choice)
MIN_STEPS, MIN_S, MAX_STEPS = 5, 3.0, 30  # timed steps a size: at least 5 and 3 s, at most 30
DIST_TIMED_STEPS = 8  # timed steps under torchrun, the same on every rank (each step is a collective)
EVAL_READINGS, EVAL_AGREE = 3, 1.25  # inference batches: a third only when the first two differ by over 1.25x
REPORT_S = 2.0  # s: figures, calibration and report.html after the test split (what they take for 10 classes)


def epoch_sizes(cfg: Config, data: DataBundle, epochs: int) -> list[int]:
    """Each epoch's training side in px for an ``epochs``-epoch run."""
    return [training_size(e, epochs=epochs, cfg=cfg.train, image_size=data.image_size) or data.image_size
            for e in range(epochs)]


def measure(s: Session) -> dict:
    """Seconds a training step (by px: the first and last epochs' sizes differ with progressive resizing),
    per epoch of validation and saving, and for the test split and report; how many steps each step time
    is the mean of; and the share of this process's CPUs other processes kept busy meanwhile."""
    times, cpu_s, busy_s, wall_s = {}, 0.0, 0.0, 0.0
    for px in sorted({*epoch_sizes(s.cfg, s.data, 2)}):
        times[px], cpu, busy, wall = _time_steps(s, 0 if px == s.data.image_size else px)
        cpu_s, busy_s, wall_s = cpu_s + cpu, busy_s + busy, wall_s + wall
    # read only where this process trains alone: streaming workers and other torchrun ranks are its own work
    alone = not s.dist.enabled and s.data.splits["train"].images is not None
    others = max(busy_s - cpu_s, 0.0) / (wall_s * len(os.sched_getaffinity(0))) if alone and busy_s >= 0 and wall_s \
        else None
    return {"step_s": {px: _mean(t) for px, t in times.items()}, **_fixed_costs(s),
            "timed_steps": {px: len(t) for px, t in times.items()},
            "others_cpu": None if others is None else round(min(others, 1.0), 2)}


def _time_steps(s: Session, size: int) -> tuple[list[float], float, float, float]:
    """Training steps at ``size`` px (0: as cached) until the rule is met: their s each, and while they ran
    the CPU s this process used, the CPU s every process used (-inf where unknown) and the wall s."""
    s.model.train()
    lr = lr_for_step(s.cfg, 0, s.steps_per_epoch)
    batches, times, untimed = _endless(s, size), [], WARMUP_STEPS
    cpu_s = busy_s = 0.0
    start, cpu, busy = time.perf_counter(), time.process_time(), busy_cpu_s()
    while not _enough(s, times):
        x, y = next(batches)
        train_step(s, x, y, lr, len(y) * s.dist.world)
        if s.ema is not None:
            s.ema.update(s.model)
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)
        now, cpu_now, busy_now = time.perf_counter(), time.process_time(), busy_cpu_s()
        if untimed:
            untimed -= 1
        else:
            times.append(now - start)
            cpu_s += cpu_now - cpu
            busy_s += busy_now - busy if busy_now >= 0 <= busy else -float("inf")
        start, cpu, busy = now, cpu_now, busy_now
    return times, cpu_s, busy_s, sum(times)


def _enough(s: Session, times: list[float]) -> bool:
    if s.dist.enabled:  # every rank takes the same count, not its own clock's
        return len(times) >= DIST_TIMED_STEPS
    return len(times) >= MAX_STEPS or (len(times) >= MIN_STEPS and sum(times) >= MIN_S)


def busy_cpu_s() -> float:
    """CPU s spent busy so far, by every process, on the CPUs this process may run on (Linux's
    /proc/stat: user, nice, system, irq, softirq and steal time); -1 where that cannot be read."""
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        lines = Path("/proc/stat").read_text().splitlines()
    except (OSError, AttributeError):
        return -1.0
    busy = 0
    for line in lines:
        name, *ticks = line.split()
        if name in mine:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, ticks[:8])
            busy += user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK")


def _mean(times: list[float]) -> float:
    """The mean with the slowest step left out: one stall in a 3 s sample would move the mean by tens of
    %. The mean, not the median: the run's length is a sum of steps, slow ones included."""
    kept = sorted(times)[:-1]
    return sum(kept) / len(kept)


def _fixed_costs(s: Session) -> dict:
    """Seconds per epoch of validation and saving, and for the test split and report."""
    infer_s = _time_eval(s)  # s an image
    with tempfile.TemporaryDirectory(prefix="resnetlab-budget-") as tmp:
        start = time.perf_counter()
        save_checkpoint(Path(tmp) / "probe.pt", checkpoint_state(s))
        save_s = 2 * (time.perf_counter() - start)  # last.pt and best.pt (one serialisation, two writes)
    t = s.cfg.train
    cap = smoke_images(s.cfg) or None
    n = {name: min(len(split), cap or len(split)) for name, split in s.data.splits.items()}
    models = 2 if s.ema is not None and t.eval_raw else 1  # train.eval_raw: val scored twice
    test = n.get("test", 0) * (1 + (t.final_tta if t.final_tta > 1 else 0)) if t.final_test else 0
    untrained = n.get("val", 0) if t.score_untrained else 0  # once, before the first step
    finish_images = test + n.get("val", 0) + untrained
    return {"epoch_overhead_s": (n.get("val", 0) * models + n.get(t.monitor, 0)) * infer_s + save_s,
            # the final curves.png (~0.5 s; while training they are redrawn at most once a minute)
            "finish_s": finish_images * infer_s + (REPORT_S if test and t.report else 0) + 0.5,
            # what the corrections rescale by the run's own validation speed (budget/correction.py)
            "infer_s": infer_s, "finish_images": finish_images,
            "full_steps": s.loaders["train"].full_steps if not t.limit_batches else len(s.loaders["train"])}


def _endless(s: Session, size: int):
    """Training batches at ``size``, epoch after epoch (a split may have fewer batches than the timing needs)."""
    epoch = 0
    while True:
        yield from s.loaders["train"].epoch(epoch, size=size)
        epoch += 1


def _time_eval(s: Session) -> float:
    """Seconds an image of inference, from batches of val (or test); 0 when there is neither. The fastest of
    2-3 readings: a new model's first batches at the eval batch size can stall on fresh memory (up to
    ~10x a later batch's s), and one stalled reading would plan the test and report many times too long."""
    name = next((n for n in ("val", "test") if n in s.loaders), None)
    if name is None:
        return 0.0
    batch = next(iter(s.loaders[name].epoch(0)))
    readings: list[float] = []
    while len(readings) < 2 or (len(readings) < EVAL_READINGS and max(readings) > EVAL_AGREE * min(readings)):
        out = infer(s.model, iter([batch]), mean=s.mean, std=s.std, device=s.device, precision=s.precision,
                    channels_last=s.cfg.train.channels_last, num_classes=len(s.data.classes))
        readings.append(out.seconds / max(len(out.labels), 1))
    return min(readings)
