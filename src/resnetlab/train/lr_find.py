"""The learning-rate range test (Smith 2017; fastai's lr_find).

Train for up to ``steps`` batches while the rate grows exponentially from
``start`` to ``end``; record the loss; stop once the smoothed loss passes
``diverge`` times its minimum. The model and optimiser are put back as they were
afterwards, so a range test never leaves its mark on the run it is part of.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np

from resnetlab.errors import UserError
from resnetlab.train.session import Session
from resnetlab.train.stages import apply_stage, freeze_bn_statistics
from resnetlab.train.step import train_step

SUGGESTION_RULE = ("steepest descent of the smoothed loss against log10(lr), between the first 10% of steps "
                   "and its minimum")


@dataclass
class LrFindResult:
    lr: list[float]
    loss: list[float]  # raw loss a step (mean over the batch)
    smoothed: list[float]  # exponential moving average, bias-corrected (fastai's, beta 0.98)
    suggested_lr: float
    rule: str
    min_loss_lr: float  # where the smoothed loss is lowest; a tenth of it is the other common pick
    stopped_early: bool  # diverged before reaching ``end``

    def to_dict(self) -> dict:
        return asdict(self)


def check_range(start: float, end: float, steps: int) -> None:
    if not (0 < start < end):
        raise UserError(f"the sweep must rise: --start {start:g} must be positive and below --end {end:g}")
    if steps < 10:
        raise UserError(f"--steps {steps} is too few to see a curve: use 10 or more (100 is usual)")


def lr_find(s: Session, *, start: float = 1e-7, end: float = 10.0, steps: int = 100, diverge: float = 4.0,
            stage: int = 0, beta: float = 0.98) -> LrFindResult:
    check_range(start, end, steps)
    saved_model = copy.deepcopy(s.model.state_dict())
    saved_optim = copy.deepcopy(s.optimizer.state_dict())
    if s.cfg.stages:
        apply_stage(s.model, s.optimizer, s.cfg, stage)
    s.model.train()
    if s.cfg.stages:
        freeze_bn_statistics(s.model, s.cfg, stage)
    lrs, losses, smoothed = [], [], []
    average, best, stopped = 0.0, math.inf, False
    loader = s.loaders["train"]
    batches = (b for epoch in range(10**6) for b in loader.epoch(epoch))
    try:
        for i in range(steps):
            lr = start * (end / start) ** (i / (steps - 1))
            x, y = next(batches)
            _, loss_sum = train_step(s, x, y, lr, len(y) * s.dist.world)
            loss = loss_sum.item() / len(y)
            average = beta * average + (1 - beta) * loss
            value = average / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(value)
            best = min(best, value)
            if not math.isfinite(loss) or value > diverge * best:
                stopped = True
                break
    finally:
        s.model.load_state_dict(saved_model)
        s.optimizer.load_state_dict(saved_optim)
    if len(lrs) < 5:
        raise UserError(f"the loss diverged after {len(lrs)} steps, at lr {lrs[-1]:.1e}: lower --start")
    return LrFindResult(lrs, losses, smoothed, *suggest(lrs, smoothed), stopped)


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, str, float]:
    """(suggested lr, the rule, lr at the minimum): the steepest fall of the smoothed loss over
    log10(lr), searched before the minimum (past it the curve falls only as it diverges) and after
    the first 10% of steps (where the moving average has too few points to mean much)."""
    lo = int(np.argmin(smoothed))
    skip = max(1, len(lrs) // 10)
    logs = np.log10(np.asarray(lrs))
    if lo - skip < 2:
        return lrs[lo] / 10, "a tenth of the loss minimum (the curve has no falling part)", lrs[lo]
    slope = np.gradient(np.asarray(smoothed[skip: lo + 1]), logs[skip: lo + 1])
    return float(lrs[skip + int(np.argmin(slope))]), SUGGESTION_RULE, float(lrs[lo])


def loss_change(losses: list[float], window: int) -> list[float]:
    """(loss[i] - loss[i - window]) / window: the GTSRB tutorial's simple-moving-average derivative,
    in loss units a step; NaN for the first ``window`` steps."""
    out = [float("nan")] * min(window, len(losses))
    out += [(losses[i] - losses[i - window]) / window for i in range(window, len(losses))]
    return out
