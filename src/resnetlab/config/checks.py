"""Checks of a whole Config after every value is set: each field's range rule (kept beside the field in
schema.py, like its choices), the rules that join fields, and the stages."""

from __future__ import annotations

import dataclasses
import re

from resnetlab.config.keys import resolve_key, section_items, set_value, unknown_choice
from resnetlab.config.schema import SECTIONS, Config, ScheduleConfig
from resnetlab.errors import UserError

# keys a ladder rung may not set: the plan sets the run's length, the hardware sets device and precision,
# and the run's name and folder are one for all rungs
PLAN_KEYS = {"train.time_budget": "the budget is the whole run's", "train.ladder": "rungs do not nest",
             "train.ladder_min_epochs": "the rule is the whole ladder's", "train.ladder_rung": "rungs do not nest",
             "train.probe_cache": "the cache serves the whole ladder",
             "train.epochs": "the plan sets it",
             "train.steps_per_epoch": "the plan sets it", "train.max_steps": "the plan sets it",
             "train.end_moves": "the plan sets it",
             "train.device": "the hardware is the run's",
             "train.precision": "the hardware chooses it", "train.out_dir": "the run has one folder",
             "train.name": "the run has one folder", "seed": "every rung trains from the run's seed",
             "train.compile": "the run decides it before timing", "train.dist_timeout": "the processes share one"}


# the keys a time budget plans: a run's length
BUDGET_KEYS = ("train.epochs", "train.steps_per_epoch", "train.max_steps", "train.end_moves")


def yield_to_command_line(cfg: Config, keys: set[str]) -> list[str]:
    """A key set on the command line (``keys``, full names) is never replaced by what the recipe plans:
    the time budget steps aside for a length the user gives (both on the command line: refused), the
    recipe's ladder for a key one of its rungs sets, and in a staged recipe train.epochs is the last
    stage's epochs plus the earlier stages'. Returns one line for each thing that stepped aside; a
    combination that cannot hold is refused in one line.
    Called before validate(): the validated config is the one that trains."""
    notes, t = [], cfg.train
    length = [k for k in BUDGET_KEYS if k in keys and (k == "train.epochs" or _get(cfg, k))]  # 0: the default
    if t.time_budget and length:
        given = ", ".join(f"{k}={_get(cfg, k)}" for k in length)
        if "train.time_budget" in keys:
            raise UserError(f"{given} and train.time_budget are both set: the budget plans the run's length, "
                            "so give one or the other")
        notes.append(f"{given} from the command line: the recipe's time budget ({t.time_budget}) is off "
                     "for this run")
        t.time_budget = ""
        # the budget's own end (a resumed budget run's corrections set it), unless the user gave it
        if "train.max_steps" not in keys:
            t.max_steps = 0
        if "train.end_moves" not in keys:
            t.end_moves = []
    if t.time_budget and t.ladder and "train.ladder" not in keys:  # a ladder the user gives is theirs to rule
        ruled = sorted({resolve_key(k) for rung in t.ladder for k, _ in section_items(rung)} & keys)
        if ruled:
            notes.append(f"{ruled[0]} from the command line: the recipe's ladder, whose rungs set it, is off; "
                         f"the time budget plans the length of this config as it is")
            t.ladder, t.ladder_rung = [], -1
    if cfg.stages and "train.epochs" in keys:
        if "stages" in keys:
            raise UserError("stages and train.epochs are both set: train.epochs is the stages' sum, so give the "
                            "epochs in the stages")
        if any(st.cycles for st in cfg.stages):
            raise UserError("train.epochs cannot be set on a recipe whose stages count SGDR cycles: copy the "
                            "recipe (resnetlab recipes NAME > mine.yaml) and give each stage its epochs or cycles")
        before = sum(st.epochs for st in cfg.stages[:-1])
        if t.epochs <= before:
            raise UserError(f"train.epochs={t.epochs} leaves nothing for the last stage: the earlier stages take "
                            f"{before} epochs; give more than {before}")
        cfg.stages[-1].epochs = t.epochs - before
        if before:
            notes.append(f"train.epochs={t.epochs}: the last stage trains {t.epochs - before} epochs after the "
                         f"earlier stages' {before}")
    return notes


def _get(cfg: Config, full: str):
    section, _, name = full.partition(".")
    return getattr(getattr(cfg, section), name) if name else getattr(cfg, section)


def validate(cfg: Config) -> Config:
    """Every field's range rule (beside the field in schema.py), then the rules that join fields;
    each failure is one line naming the key. Returns the config frozen: ``cfg`` itself, or a checked
    copy when ``cfg`` was frozen already."""
    if cfg.frozen:
        cfg = cfg.thawed()
    for name, cls in SECTIONS.items():
        section = getattr(cfg, name)
        for f in dataclasses.fields(cls):
            ok = f.metadata.get("ok")
            if ok is not None and not ok(getattr(section, f.name)):
                raise UserError(f"{name}.{f.name} {f.metadata['must']}")
            choices, value = f.metadata.get("choices"), getattr(section, f.name)
            if choices and isinstance(value, list) and (bad := unknown_choice(value, choices)) is not None:
                # a list set in Python, past set_value's check (train.log_to)
                raise UserError(f"{name}.{f.name}: {bad!r} is not one of: {', '.join(choices)}")
    d, a, t, m, o = cfg.data, cfg.augment, cfg.train, cfg.model, cfg.optim
    flips = flip_settings(cfg)
    across = [
        (d.dataset.strip() != "", "data.dataset is empty: give a folder or CSV of photos (resnetlab train "
         "path/to/photos) or a built-in data set such as fashion-mnist or cifar10"),
        (d.val_fraction + d.test_fraction < 1, "data.val_fraction + data.test_fraction must be below 1"),
        (d.auto_val_fraction + d.test_fraction < 1, "data.auto_val_fraction + data.test_fraction must be below 1"),
        (not (d.val_count and d.val_fraction), "set data.val_count or data.val_fraction, not both"),
        (not (d.unknown_count and d.unknown_fraction), "set data.unknown_count or data.unknown_fraction, not both"),
        (not (a.mixup_alpha or a.cutmix_alpha) or t.batch_size >= 2,
         "mixup and CutMix mix each image with another of its batch: set train.batch_size to 2 or more"),
        (not (d.multi_label and d.sampler == "balanced"),
         "data.sampler=balanced draws images by their one class: with data.multi_label=true set "
         "optim.class_weights=balanced instead (it weighs each label's positives)"),
        (not (d.multi_label and (d.classes or d.unknown_count or d.unknown_fraction)),
         "data.classes and the unknown class choose one class an image: with data.multi_label=true every label "
         "in the CSV is a class (drop labels from its label column to leave them out)"),
        (not (t.time_budget and cfg.stages and cfg.stages[-1].cycles),
         "train.time_budget plans the last stage's epochs, and this one counts SGDR cycles: with stages, give "
         "each stage its epochs instead"),
        (not (t.max_steps and cfg.stages),
         "train.max_steps ends one schedule; with stages, give each stage its epochs"),
        (not t.end_moves or t.max_steps > t.end_moves[-1][0], f"train.end_moves moves the end to train.max_steps, "
         f"after its last move's step: set train.max_steps above {t.end_moves[-1][0] if t.end_moves else 0}, or "
         "train.end_moves=[] (a time budget sets both in its run's config.yaml)"),
        (t.ladder_rung < len(t.ladder), f"train.ladder_rung={t.ladder_rung} names no rung: train.ladder has "
         f"{len(t.ladder)} (0 to {len(t.ladder) - 1}); use -1 to let the ladder's rule choose"),
        (not (t.lookahead and not t.ema_decay), "train.lookahead pulls the weights to their EMA: set "
         "train.ema_decay too (airbench: 0.95), or train.lookahead=0"),
        (not (cfg.stages and (m.freeze_bn_weight or o.bn_bias_lr_scale != 1 or m.stem == "whiten")),
         "stages set which groups train and at what rates: model.freeze_bn_weight, optim.bn_bias_lr_scale and "
         "model.stem=whiten are for runs without stages"),
        (not (cfg.stages and t.lookahead and any(st.precompute for st in cfg.stages)),
         "train.lookahead moves the whole model, and a precompute stage trains the head on fixed features: set "
         "train.lookahead=0 or precompute: false"),
        (not (d.multi_label and t.final_tta_views == "fixed"), "train.final_tta_views=fixed averages softmax "
         "logits: multi-label runs take random"),
        (a.hflip or not flips, "augment.hflip=false, but " + " and ".join(need for need, _ in flips)
         + (" need" if len(flips) > 1 else " needs") + " flips: also set " + " ".join(fix for _, fix in flips)
         + ", or keep augment.hflip=true"),
        (t.final_tta_views != "fixed" or t.final_tta in ((1, 2, 6) if a.hflip else (1, 3)),
         f"train.final_tta_views=fixed has {'1, 2 or 6' if a.hflip else '1 or 3 (no flips)'} views, not "
         f"train.final_tta={t.final_tta}"),
    ]
    for ok, message in across:
        if not ok:
            raise UserError(message)
    if t.time_budget:
        parse_duration(t.time_budget, "train.time_budget")
    for i in range(len(t.ladder)):  # checked with or without a budget (without one, the config trains as it is)
        rung_config(cfg, i)
    resolve_stages(cfg)
    return cfg.freeze()


def flip_settings(cfg: Config) -> list[tuple[str, str]]:
    """(the setting, its value without flips) of each setting besides augment.hflip that flips images: one
    error names them all when hflip is off."""
    t = cfg.train
    flips = [("augment.hflip_alternate=true", "augment.hflip_alternate=false")] if cfg.augment.hflip_alternate else []
    if t.final_tta_views == "fixed" and t.final_tta in (2, 6):
        flips.append((f"train.final_tta={t.final_tta} (fixed views)", f"train.final_tta={t.final_tta // 2}"))
    return flips


def rung_config(cfg: Config, index: int) -> Config:
    """The config with train.ladder[index]'s values set (a copy); each bad rung key or value is one line."""
    where = f"train.ladder[{index}]"
    out = cfg.thawed()
    out.train.ladder, out.train.ladder_rung = [], -1
    for key, value in section_items(cfg.train.ladder[index]):
        if key == "stages" or key.startswith("stages."):
            raise UserError(f"{where} sets stages: a time budget plans one schedule, so a rung cannot have "
                            "stages; give a rung model, data, augment, optim or schedule keys")
        try:
            full = resolve_key(key)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        if full in PLAN_KEYS:
            raise UserError(f"{where} sets {full}, which a rung may not: {PLAN_KEYS[full]}")
        set_value(out, full, value, source=where)
    try:
        validate(out)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return out


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
