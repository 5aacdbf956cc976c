"""Checks of a whole Config (ranges, combinations, stages) after every value is set."""

from __future__ import annotations

import dataclasses
import re

from resnetlab.config.schema import Config, ScheduleConfig
from resnetlab.errors import UserError


def validate(cfg: Config) -> None:
    """Range checks that a type cannot express; each names the key."""
    checks = [
        (cfg.train.epochs >= 1, "train.epochs must be at least 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (cfg.train.eval_batch_size >= 1, "train.eval_batch_size must be at least 1"),
        (cfg.train.final_tta >= 1, "train.final_tta must be at least 1 (1: no test-time augmentation)"),
        (cfg.optim.lr > 0, "optim.lr must be positive"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be 0 or more"),
        (cfg.optim.grad_clip_norm >= 0, "optim.grad_clip_norm must be 0 (off) or more"),
        (0 <= cfg.optim.label_smoothing < 1, "optim.label_smoothing must be in [0, 1)"),
        (len(cfg.optim.betas) == 2, "optim.betas must be two numbers, e.g. [0.9, 0.999]"),
        (0 <= cfg.data.val_fraction < 1, "data.val_fraction must be in [0, 1)"),
        (0 <= cfg.data.test_fraction < 1, "data.test_fraction must be in [0, 1)"),
        (cfg.data.val_fraction + cfg.data.test_fraction < 1, "data.val_fraction + data.test_fraction must be below 1"),
        (cfg.data.val_count >= 0, "data.val_count must be 0 (off) or more"),
        (not (cfg.data.val_count and cfg.data.val_fraction), "set data.val_count or data.val_fraction, not both"),
        (cfg.data.unknown_count >= 0, "data.unknown_count must be 0 (off) or more"),
        (0 <= cfg.data.unknown_fraction <= 1, "data.unknown_fraction must be in [0, 1]"),
        (not (cfg.data.unknown_count and cfg.data.unknown_fraction),
         "set data.unknown_count or data.unknown_fraction, not both"),
        (cfg.data.roi_margin >= 0, "data.roi_margin must be 0 or more"),
        (cfg.data.image_size >= 0, "data.image_size must be 0 (native) or a size in px"),
        (cfg.data.channels in (0, 1, 3), "data.channels must be 0 (auto), 1 or 3"),
        (cfg.augment.crop_padding >= 0, "augment.crop_padding must be 0 or more px"),
        (0 <= cfg.augment.rotation <= 180, "augment.rotation must be in [0, 180] degrees"),
        (cfg.augment.zoom >= 1, "augment.zoom must be 1 (off) or more"),
        (0 <= cfg.augment.lighting < 1, "augment.lighting must be in [0, 1)"),
        (not cfg.augment.resized_crop or (len(cfg.augment.resized_crop) == 2
                                          and 0 < cfg.augment.resized_crop[0] <= cfg.augment.resized_crop[1] <= 1),
         "augment.resized_crop must be [] or [min, max] area shares with 0 < min <= max <= 1"),
        (cfg.schedule.warmup_epochs >= 0, "schedule.warmup_epochs must be 0 or more"),
        (0 < cfg.schedule.pct_start < 1, "schedule.pct_start must be in (0, 1)"),
        (cfg.schedule.cycle_len > 0, "schedule.cycle_len must be positive"),
        (cfg.schedule.cycle_mult >= 1, "schedule.cycle_mult must be 1 or more"),
        (0 <= cfg.schedule.min_lr_ratio <= 1, "schedule.min_lr_ratio must be in [0, 1]"),
        (cfg.train.limit_batches >= 0, "train.limit_batches must be 0 (all) or more"),
        (cfg.train.checkpoint_every >= 0, "train.checkpoint_every must be 0 (off) or more steps"),
        (0 <= cfg.train.ema_decay < 1, "train.ema_decay must be in (0, 1) (0.999 is usual), or 0 for no EMA"),
        (cfg.augment.policy_ops >= 1, "augment.policy_ops must be 1 or more"),
        (0 <= cfg.augment.policy_magnitude <= 30, "augment.policy_magnitude must be a bin in [0, 30]"),
        (0 <= cfg.augment.erasing <= 1, "augment.erasing must be a probability in [0, 1]"),
        (cfg.augment.mixup_alpha >= 0 and cfg.augment.cutmix_alpha >= 0,
         "augment.mixup_alpha and augment.cutmix_alpha must be 0 (off) or positive"),
        (0 <= cfg.augment.mix_prob <= 1, "augment.mix_prob must be a probability in [0, 1]"),
        (not (cfg.augment.mixup_alpha or cfg.augment.cutmix_alpha) or cfg.train.batch_size >= 2,
         "mixup and CutMix mix each image with another of its batch: set train.batch_size to 2 or more"),
        (cfg.train.steps_per_epoch >= 0, "train.steps_per_epoch must be 0 (all) or more"),
        (cfg.train.size_start >= 0, "train.size_start must be 0 (off) or a size in px"),
        (cfg.train.size_end >= 0, "train.size_end must be 0 (data.image_size) or a size in px"),
        (len(cfg.train.size_ramp) == 2 and 0 <= cfg.train.size_ramp[0] <= cfg.train.size_ramp[1] <= 1,
         "train.size_ramp must be [from, to], shares of the run with 0 <= from <= to <= 1"),
        (not (cfg.train.time_budget and cfg.stages),
         "train.time_budget sets the epochs of one schedule; with stages, give each stage its epochs instead"),
        (cfg.train.early_stop_patience >= 0, "train.early_stop_patience must be 0 (off) or more epochs"),
        (0 <= cfg.train.early_stop_min_delta < 1, "train.early_stop_min_delta must be in [0, 1) (a top-1 share)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if cfg.train.time_budget:
        parse_duration(cfg.train.time_budget, "train.time_budget")
    resolve_stages(cfg)


def parse_duration(text: str, key: str) -> float:
    """'90s', '10m', '1h30m', '1.5h' or a number of seconds -> seconds."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(text))
    if not parts or not any(parts.groups()):
        raise UserError(f"{key}={text!r} should be a duration like 90s, 10m, 1h30m or 1.5h")
    h, m, sec = (float(g or 0) for g in parts.groups())
    seconds = 3600 * h + 60 * m + sec
    if seconds <= 0:
        raise UserError(f"{key}={text!r} must be longer than 0 s")
    return seconds


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
        if st.precompute and st.train != "head":
            raise UserError(f"{where}.precompute needs train: head (only a frozen backbone gives the same "
                            f"features every epoch), not train: {st.train}")
        if st.precompute_views < 0:
            raise UserError(f"{where}.precompute_views must be 0 or more")
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
