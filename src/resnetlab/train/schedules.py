"""Learning-rate schedules as pure functions of the optimiser step.

``lr_at(step, ...)`` gives the rate for step ``step`` (0-based) and depends on
nothing else, so resume needs only the step count and tests can check values
one by one. Where PyTorch has the same schedule, the formula is its closed
form (CosineAnnealingLR, PolynomialLR, MultiStepLR, CosineAnnealingWarmRestarts,
OneCycleLR with cosine annealing), evaluated every step rather than every epoch.
"""

from __future__ import annotations

import math

from resnetlab.config import ScheduleConfig


def lr_at(
    step: int, *, base_lr: float, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig
) -> float:
    if cfg.name == "onecycle":  # has its own warm-up phase
        return _onecycle(step, base_lr, total_steps, steps_per_epoch, cfg)
    if cfg.name == "triangle":
        return _triangle(step, base_lr, total_steps, steps_per_epoch, cfg)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        # (step + 1) so the first step already moves; reaches base_lr at the last warm-up step
        return base_lr * (step + 1) / warmup
    t, span = step - warmup, max(1, total_steps - warmup)
    low = base_lr * cfg.min_lr_ratio
    if cfg.name == "constant":
        return base_lr
    if cfg.name == "step":
        passed = sum(step >= round(m * steps_per_epoch) for m in cfg.milestones)
        return base_lr * cfg.gamma**passed
    if cfg.name == "cosine":
        return low + (base_lr - low) * (1 + math.cos(math.pi * min(t, span) / span)) / 2
    if cfg.name == "poly":
        return low + (base_lr - low) * max(0.0, 1 - t / span) ** cfg.power
    if cfg.name == "sgdr":
        t_cur, t_i = _sgdr_position(t, cfg.cycle_len * steps_per_epoch, cfg.cycle_mult)
        return low + (base_lr - low) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
    raise ValueError(f"unknown schedule {cfg.name}")


def _sgdr_position(t: int, first: float, mult: float) -> tuple[float, float]:
    """Steps into the current cycle and that cycle's length (Loshchilov & Hutter 2017)."""
    if mult == 1:
        return t % first, first
    # cycles 0..n-1 span first * (mult**n - 1) / (mult - 1) steps
    n = int(math.log(t / first * (mult - 1) + 1, mult))
    start = first * (mult**n - 1) / (mult - 1)
    if t < start:  # float rounding at a cycle boundary
        n -= 1
        start = first * (mult**n - 1) / (mult - 1)
    length = first * mult**n
    if t - start >= length:
        start, length = start + length, length * mult
    return t - start, length


def sgdr_cycle_ends(total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> list[int]:
    """Steps after which an SGDR cycle ends (where snapshots are taken)."""
    ends, start, length = [], 0.0, cfg.cycle_len * steps_per_epoch
    while start + length <= total_steps + 1e-9:
        ends.append(round(start + length))
        start, length = start + length, length * cfg.cycle_mult
    return ends


def length_free_steps(cfg: ScheduleConfig, steps_per_epoch: int) -> float:
    """Steps at the start whose rates do not depend on the run's total steps (math.inf: none do): a run
    can change its length after them and still be the fixed run of its new length. The warm-up (onecycle:
    its rise when given in epochs); schedules that count in epochs only (constant, step, sgdr), all."""
    if cfg.name in ("constant", "step", "sgdr"):
        return math.inf
    if cfg.name not in ("onecycle", "triangle"):
        return round(cfg.warmup_epochs * steps_per_epoch)  # as lr_at counts them
    # the rising steps 0 .. rise - 1; without warmup_epochs the rise is pct_start of the total (triangle: the
    # same, its peak at step ``rise``)
    return math.floor(cfg.warmup_epochs * steps_per_epoch)


def _onecycle(step: int, base_lr: float, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    initial = base_lr / cfg.div_factor
    final = initial / cfg.final_div_factor
    # the rise: schedule.warmup_epochs when given (a time budget pins it), else pct_start of the run
    rise = cfg.warmup_epochs * steps_per_epoch if cfg.warmup_epochs else cfg.pct_start * total_steps
    peak_step = float(rise) - 1
    last_step = total_steps - 1
    if peak_step <= 0 and step == 0:
        # pct_start * total_steps <= 1: a rise of one step or none (torch's OneCycleLR divides by
        # zero here); the first step is at the peak
        return base_lr
    if step <= peak_step:
        pct, start, end = step / peak_step, initial, base_lr
    else:
        rise = max(peak_step, 0.0)
        span = last_step - rise
        pct, start, end = (step - rise) / span if span > 0 else 1.0, base_lr, final
    return end + (start - end) / 2 * (1 + math.cos(math.pi * min(pct, 1.0)))


def _triangle(step: int, base_lr: float, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    """airbench's: linear from base_lr / div_factor at step 0 to base_lr at step ``rise``, then linear to
    base_lr * min_lr_ratio at step ``total_steps`` (one past the last)."""
    start, end = 1 / cfg.div_factor, cfg.min_lr_ratio
    rise = cfg.warmup_epochs * steps_per_epoch if cfg.warmup_epochs else cfg.pct_start * total_steps
    if step < rise:
        return base_lr * (start + (1 - start) * step / rise)
    return base_lr * (1 + (end - 1) * (step - rise) / max(total_steps - rise, 1e-9))
