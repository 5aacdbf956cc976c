"""Staged training: which layer groups train, at what rates, in each phase of a run.

A run without ``stages`` is one stage that trains everything at ``optim.lr``
under ``schedule``. With stages (the fastai GTSRB tutorial: head for 1 epoch,
unfreeze, then SGDR cycles), each stage has its own schedule over its own
steps, and the learning rate stays a pure function of the global step, so
resume lands in the right stage at the right rate.
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from resnetlab.config import Config, ScheduleConfig, StageConfig
from resnetlab.models.groups import first_trained, group_lr_scales, layer_groups
from resnetlab.train.schedules import length_free_steps, lr_at, sgdr_cycle_ends


def stage_at(cfg: Config, epoch: int) -> tuple[int, int]:
    """(stage index, the epoch it starts at) for a 0-based epoch."""
    start = 0
    for i, st in enumerate(cfg.stages):
        if epoch < start + st.epochs:
            return i, start
        start += st.epochs
    return len(cfg.stages) - 1, start - cfg.stages[-1].epochs


def stage_schedule(cfg: Config, st: StageConfig) -> ScheduleConfig:
    changes = {k: v for k, v in (("name", st.schedule), ("cycle_len", st.cycle_len),
                                 ("cycle_mult", st.cycle_mult)) if v is not None}
    return dataclasses.replace(cfg.schedule, **changes)


def top_lr(cfg: Config, st: StageConfig) -> float:
    return st.lr[-1] if st.lr else cfg.optim.lr


def run_steps(cfg: Config, steps_per_epoch: int) -> int:
    """The run's optimiser steps: every step of train.epochs, or train.max_steps when that ends it sooner
    (inside the last epoch); the schedule spans them."""
    every = steps_per_epoch * cfg.train.epochs
    return min(every, cfg.train.max_steps) if cfg.train.max_steps else every


def length_free(cfg: Config, steps_per_epoch: int) -> float:
    """Steps at the start that train alike whatever the run's length, so that a time budget may set the length
    after them (budget/plan.py) and the run is still the fixed run of its new length: the schedule's
    (schedules.length_free_steps). train.lookahead averages by the share of the run done, so within these steps
    its progress counts as 0 (loop.lookahead_progress); under a schedule free of the length throughout, it
    depends on the length from the first step, and no step is length-free."""
    free = length_free_steps(cfg.schedule, steps_per_epoch)
    return 0 if cfg.train.lookahead and math.isinf(free) else free


def lr_for_step(cfg: Config, step: int, steps_per_epoch: int, end: int = 0, moves=None) -> float:
    """The head's learning rate at global step ``step`` (other groups get their multiple of it).
    ``end``: the step the run ends at when a time budget's correction moved it (0: the config's); ``moves``:
    where it moved the end late in the run (None: train.end_moves)."""
    if not cfg.stages:
        end = end or run_steps(cfg, steps_per_epoch)
        moves = cfg.train.end_moves if moves is None else moves
        if math.isfinite(length_free_steps(cfg.schedule, steps_per_epoch)):  # a schedule laid over the run's length
            step, end = laid_position(step, end, moves)
        return lr_at(step, base_lr=cfg.optim.lr, total_steps=end, steps_per_epoch=steps_per_epoch, cfg=cfg.schedule)
    index, start = stage_at(cfg, step // steps_per_epoch)
    st = cfg.stages[index]
    return lr_at(step - start * steps_per_epoch, base_lr=top_lr(cfg, st), total_steps=st.epochs * steps_per_epoch,
                 steps_per_epoch=steps_per_epoch, cfg=stage_schedule(cfg, st))


def laid_position(step: int, end: int, moves) -> tuple[float, int]:
    """(where global ``step`` falls on the schedule as first laid, that schedule's steps): ``step`` and ``end``
    until a time budget moved the end late in the run. ``moves``: train.end_moves, [[step, end], ...]: from each
    move's step, what was left of the schedule is spread evenly over the steps to the new end (the next move's
    ``end``, else ``end``), so that the run's last step is the schedule's."""
    if not moves:
        return step, end
    laid, starts, ends = moves[0][1], [0, *(b for b, _ in moves)], [*(e for _, e in moves), end]
    position = 0.0  # where the segment that begins at starts[i] begins on the laid schedule

    def at(t: int, start: int, stop: int) -> float:  # a segment's step ``t``: its last step lands on laid - 1
        return laid - 1.0 if stop - 1 <= start else position + (t - start) * (laid - 1 - position) / (stop - 1 - start)

    for i, (start, stop) in enumerate(zip(starts, ends)):
        if i == len(moves) or step < starts[i + 1]:
            return (step if i == 0 else at(step, start, stop)), laid
        position = at(starts[i + 1], start, stop)
    raise AssertionError("unreachable: the last segment returns")


def snapshot_epochs(cfg: Config) -> set[int]:
    """1-based epochs after which an SGDR cycle of a ``snapshots: true`` stage ends."""
    out, start = set(), 0
    for st in cfg.stages:
        if st.snapshots:
            sched = stage_schedule(cfg, st)
            # cycle ends in epochs: steps_per_epoch=1 makes the step count an epoch count
            out |= {start + e for e in sgdr_cycle_ends(st.epochs, 1, sched)}
        start += st.epochs
    return out


def apply_stage(model: nn.Module, optimizer, cfg: Config, index: int) -> str:
    """Freeze the groups before the stage's first trained one; set each group's rate scale and decay.

    Returns a line describing the stage for the log.
    """
    st = cfg.stages[index]
    groups = layer_groups(model)
    first = first_trained(model, st.train)
    scales = [0.0] * first + group_lr_scales(len(groups) - first, st.lr)
    by_name = {}
    for (name, modules), scale in zip(groups, scales):
        by_name[name] = scale
        for m in modules:
            for sub in m.modules():
                is_bn = isinstance(sub, nn.modules.batchnorm._NormBase)
                for p in sub.parameters(recurse=False):
                    p.requires_grad_(scale > 0 or (is_bn and st.train_bn))
    decay = st.weight_decay if st.weight_decay is not None else cfg.optim.weight_decay
    for group in optimizer.param_groups:
        scale = by_name.get(group.get("layer_group"), 1.0)
        # a frozen group's BatchNorm that still trains (train_bn) moves at the lowest trained rate
        group["lr_scale"] = scale if scale > 0 else min(s for s in scales if s > 0)
        group["weight_decay"] = decay * group["wd_scale"]
    trained = [n for n, _ in groups][first:]
    rates = " ".join(f"{n}={top_lr(cfg, st) * s:.2e}" for n, s in zip(trained, scales[first:]))
    return (f"stage {index + 1}/{len(cfg.stages)}: {st.epochs} epochs, training {', '.join(trained)}"
            f"{' (+ BatchNorm everywhere)' if first and st.train_bn else ''}; lr {rates}; "
            f"schedule {stage_schedule(cfg, st).name}")


def freeze_bn_statistics(model: nn.Module, cfg: Config, index: int) -> None:
    """After model.train(): BatchNorm of frozen groups in eval mode, when the stage says train_bn=false."""
    st = cfg.stages[index]
    if st.train_bn:
        return
    first = first_trained(model, st.train)
    for _, modules in layer_groups(model)[:first]:
        for m in modules:
            for sub in m.modules():
                if isinstance(sub, nn.modules.batchnorm._NormBase):
                    sub.eval()
