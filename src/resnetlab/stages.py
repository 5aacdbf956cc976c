"""Staged training: which layer groups train, at what rates, in each phase of a run.

A run without ``stages`` is one stage that trains everything at ``optim.lr``
under ``schedule``. With stages (the fastai GTSRB tutorial: head for 1 epoch,
unfreeze, then SGDR cycles), each stage has its own schedule over its own
steps, and the learning rate stays a pure function of the global step, so
resume lands in the right stage at the right rate.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from resnetlab.config import Config, ScheduleConfig, StageConfig
from resnetlab.errors import UserError
from resnetlab.models.groups import first_trained, group_lr_scales, layer_groups
from resnetlab.schedules import lr_at, sgdr_cycle_ends


def resolve_stages(cfg: Config) -> None:
    """Check each stage and derive epochs from sgdr cycles; train.epochs becomes the stages' sum."""
    if not cfg.stages:
        return
    schedules = dataclasses.fields(ScheduleConfig)[0].metadata["choices"]
    for i, st in enumerate(cfg.stages):
        where = f"stages[{i}]"
        if st.schedule is not None and st.schedule not in schedules:
            raise UserError(f"{where}.schedule={st.schedule!r} is not one of: {', '.join(schedules)}")
        if len(st.lr) > 2 or any(v <= 0 for v in st.lr):
            raise UserError(f"{where}.lr must be [lr] or [lo, hi] with positive rates, got {st.lr}")
        if len(st.lr) == 2 and st.lr[0] > st.lr[1]:
            raise UserError(f"{where}.lr=[lo, hi] must rise from the first group to the head, got {st.lr}")
        if st.cycles:
            if (st.schedule or cfg.schedule.name) != "sgdr":
                raise UserError(f"{where}.cycles needs schedule sgdr")
            length = st.cycle_len or cfg.schedule.cycle_len
            mult = st.cycle_mult or cfg.schedule.cycle_mult
            total = length * st.cycles if mult == 1 else length * (mult**st.cycles - 1) / (mult - 1)
            if abs(total - round(total)) > 1e-9 or (st.epochs and st.epochs != round(total)):
                raise UserError(f"{where}: {st.cycles} cycles of {length} epochs x {mult} make {total:g} epochs, "
                                f"not {'a whole number' if not st.epochs else st.epochs}")
            st.epochs = int(round(total))
        if st.epochs < 1:
            raise UserError(f"{where}.epochs must be at least 1 (or give cycles with schedule sgdr)")
    cfg.train.epochs = sum(st.epochs for st in cfg.stages)


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


def lr_for_step(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """The head's learning rate at global step ``step`` (other groups get their multiple of it)."""
    if not cfg.stages:
        return lr_at(step, base_lr=cfg.optim.lr, total_steps=steps_per_epoch * cfg.train.epochs,
                     steps_per_epoch=steps_per_epoch, cfg=cfg.schedule)
    index, start = stage_at(cfg, step // steps_per_epoch)
    st = cfg.stages[index]
    return lr_at(step - start * steps_per_epoch, base_lr=top_lr(cfg, st), total_steps=st.epochs * steps_per_epoch,
                 steps_per_epoch=steps_per_epoch, cfg=stage_schedule(cfg, st))


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
        if group.get("decay"):
            group["weight_decay"] = decay
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
