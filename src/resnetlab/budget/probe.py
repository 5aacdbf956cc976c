"""Timing a rung on this machine: a throwaway session's training steps, an inference batch and a
checkpoint save, from which train.time_budget plans (budget/plan.py).

A rung that a later rung may replace is first timed briefly (BRIEF_STEPS steps a size); only if
that reading leaves it a chance of being chosen are its steps timed on to the full rule. The full
rule costs ~4 s a size on a slow machine, which a short budget cannot spend on rungs it will reject.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import torch

from resnetlab.config import Config
from resnetlab.data import DataBundle
from resnetlab.evaluate.inference import infer
from resnetlab.checkpoint import save_checkpoint
from resnetlab.train.session import Session, checkpoint_state
from resnetlab.train.sizes import training_size
from resnetlab.train.stages import lr_for_step
from resnetlab.train.step import train_step

WARMUP_STEPS = 3  # untimed steps before timing
BRIEF_STEPS = 5  # timed steps a size in a brief reading
FULL_MIN_S, FULL_MAX_STEPS = 3.0, 30  # the full rule: at least BRIEF_STEPS steps and 3 s, at most 30 steps
DIST_TIMED_STEPS = 8  # timed steps under torchrun, the same on every rank
EVAL_READINGS, EVAL_AGREE = 3, 1.25  # inference batches: a third only when the first two differ by over 1.25x
# s: figures, calibration and report.html after the test split (what they take for 10 classes)
REPORT_S = 2.0


def epoch_sizes(cfg: Config, data: DataBundle, epochs: int) -> list[int]:
    """Each epoch's training side in px for an ``epochs``-epoch run."""
    return [training_size(e, epochs=epochs, cfg=cfg.train, image_size=data.image_size) or data.image_size
            for e in range(epochs)]


class Probe:
    """A probe session's timings so far. ``measure(brief=True)`` then ``measure()`` continue the same
    steps: the brief reading's steps count towards the full one."""

    def __init__(self, s: Session):
        self.s = s
        image = s.data.image_size
        # at the first and last epochs' sizes (they differ with progressive resizing); 0: the cached size
        self.sizes = {px: 0 if px == image else px for px in sorted({*epoch_sizes(s.cfg, s.data, 2)})}
        self.times: dict[int, list[float]] = {px: [] for px in self.sizes}
        self.fixed: dict | None = None  # inference, saving and step counts: timed once
        # while the timed steps ran: CPU s this process used, CPU s all processes used, wall s
        self.cpu_s = self.busy_s = self.wall_s = 0.0

    def measure(self, *, brief: bool = False) -> dict:
        """Seconds a training step (by px), per epoch of validation and saving, and for the test split
        and report; ``timed_steps`` says how many steps each step time is the mean of, ``brief`` whether
        the reading stopped at BRIEF_STEPS."""
        for px in self.sizes:
            self._time_steps(px, brief)
        if self.fixed is None:
            self.fixed = _fixed_costs(self.s)
        # the share of this process's CPUs that other processes kept busy while the steps were timed
        others = None if self.busy_s < 0 or not self.wall_s else \
            max(self.busy_s - self.cpu_s, 0.0) / (self.wall_s * len(os.sched_getaffinity(0)))
        return {"step_s": {px: _mean(t) for px, t in self.times.items()}, **self.fixed,
                "timed_steps": {px: len(t) for px, t in self.times.items()}, "brief": brief,
                "others_cpu": None if others is None else round(min(others, 1.0), 2)}

    def _time_steps(self, px: int, brief: bool) -> None:
        """Steps at ``px`` timed until the rule is met: WARMUP_STEPS untimed ones first (one when it
        goes on after a brief reading). The first steps after building a model run slow (allocations,
        convolution algorithm choice), so counting them would plan a run too short."""
        s, times = self.s, self.times[px]
        s.model.train()
        lr = lr_for_step(s.cfg, 0, s.steps_per_epoch)
        untimed = WARMUP_STEPS if not times else 1
        # batches from the start of the split each time: a streamed split's one DataLoader is reset by
        # every new pass, so two sizes' passes cannot be left open and taken up again
        batches = _endless(s, self.sizes[px])
        start, cpu, busy = time.perf_counter(), time.process_time(), busy_cpu_s()
        while not self._enough(times, brief):
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
                self.cpu_s, self.wall_s = self.cpu_s + cpu_now - cpu, self.wall_s + now - start
                self.busy_s += busy_now - busy if busy_now >= 0 <= busy else -math.inf
            start, cpu, busy = now, cpu_now, busy_now

    def _enough(self, times: list[float], brief: bool) -> bool:
        if self.s.dist.enabled:  # each step is a collective: every rank takes the same count, not its own clock's
            return len(times) >= DIST_TIMED_STEPS
        if brief:
            return len(times) >= BRIEF_STEPS
        return len(times) >= FULL_MAX_STEPS or (len(times) >= BRIEF_STEPS and sum(times) >= FULL_MIN_S)


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
    %. The mean, not the median: the run's length is a sum of steps, slow ones included, and the median
    reads a few % faster than the steps an epoch takes."""
    kept = sorted(times)[:-1]
    return sum(kept) / len(kept)


def _fixed_costs(s: Session) -> dict:
    """Seconds per epoch of validation and saving, and for the test split and report."""
    eval_s = _time_eval(s)  # s an image
    with tempfile.TemporaryDirectory(prefix="resnetlab-budget-") as tmp:
        start = time.perf_counter()
        save_checkpoint(Path(tmp) / "probe.pt", checkpoint_state(s))
        save_s = 2 * (time.perf_counter() - start)  # last.pt and best.pt (one serialisation, two writes)
    n = {name: len(split) for name, split in s.data.splits.items()}
    models = 2 if s.ema is not None and s.cfg.train.eval_raw else 1  # train.eval_raw: val scored twice
    views = s.cfg.train.final_tta
    passes = 1 + (views if views > 1 else 0)  # the plain test pass, then the TTA views (the image is one)
    test = n.get("test", 0) * passes if s.cfg.train.final_test else 0
    report_s = REPORT_S if test and s.cfg.train.report else 0.0
    watched = n.get(s.cfg.train.monitor, 0)  # train.monitor: one more split scored every epoch
    untrained = n.get("val", 0) if s.cfg.train.score_untrained else 0  # once, before the first step
    return {"epoch_overhead_s": (n.get("val", 0) * models + watched) * eval_s + save_s,
            # the final curves.png (~0.5 s; while training they are redrawn at most once a minute)
            "finish_s": (test + n.get("val", 0) + untrained) * eval_s + report_s + 0.5,
            "full_steps": s.loaders["train"].full_steps if not s.cfg.train.limit_batches else len(s.loaders["train"])}


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
