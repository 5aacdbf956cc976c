"""Typed run configuration: dataclasses, loaded from YAML, changed by ``key=value``.

A recipe is a YAML file with the sections below (any may be left out). On the
command line ``optim.lr=0.05`` sets one value; a leaf name that is unique
(``lr=0.05``, ``epochs=3``) works too. Unknown keys and wrong types are errors
that name the nearest valid key, so a typo never silently trains the default.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resnetlab.errors import UserError
from resnetlab.io import atomic_write_text, read_yaml

RECIPE_DIR = Path(__file__).parent / "recipes"


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"  # a built-in name, or a folder (any layout resnetlab reads) or CSV
    classes: list[str] = field(default_factory=list)  # keep only these (ids or names); empty: all
    unknown_count: int = 0  # add an 'unknown' class of this many images drawn from the other classes
    unknown_fraction: float = 0.0  # ... or of this share of the other classes' images
    image_size: int = 0  # px, side of the square the model sees; 0 = the images' own size
    channels: int = 0  # 0 = the data set's own (1 for all-grey data, else 3)
    val_fraction: float = 0.0  # share of train held out for validation (stratified, seeded)
    val_count: int = 0  # ... or exactly this many images
    test_fraction: float = 0.0  # share of train held out as the test split (replaces the layout's)
    split_file: str = ""  # a run's split.csv: reuse its images and splits instead of drawing them
    merge_val: bool = False  # train on train + val: the final model, once the settings are chosen
    roi_crop: bool = False  # crop to the annotated region of interest (GTSRB) before resizing
    roi_margin: float = 0.1  # ... widened by this share of its width/height on each side
    sampler: str = _choice("shuffle", "shuffle", "balanced")  # balanced: classes drawn equally often
    resize: str = _choice("squash", "squash", "crop")  # squash to a square, or short side + centre crop
    cache: str = _choice("auto", "auto", "memory", "disk", "stream")  # auto: memory when it fits, else disk, else stream
    cache_dir: str = ""  # where data.cache=disk keeps decoded images; "" = $XDG_CACHE_HOME/resnetlab (~/.cache)
    cache_max_gb: float = 4.0  # GiB of uint8 pixels that 'auto' still keeps in memory
    num_workers: int = 2  # DataLoader workers when streaming
    on_bad_image: str = _choice("skip", "skip", "fail")
    normalize: str = _choice("auto", "auto", "dataset", "imagenet", "half", "none")


@dataclass
class AugmentConfig:
    crop_padding: int = 4  # px of reflect padding for the random crop; 0 turns it off
    hflip: bool = True  # random horizontal flip (off for digits and signs with text)
    rotation: float = 0.0  # degrees: uniform in [-rotation, rotation]
    zoom: float = 1.0  # largest zoom-in: scale uniform in [1, zoom] (fastai's max_zoom)
    lighting: float = 0.0  # brightness and contrast each times 1 +- up to this (fastai's max_lighting)
    resized_crop: list[float] = field(default_factory=list)  # [min, max] area share: RandomResizedCrop
    # per image, after the above: TrivialAugmentWide (no settings) or RandAugment (policy_ops ops at
    # policy_magnitude of 31 bins), torchvision's op tables on both the cached and the streamed path
    policy: str = _choice("none", "none", "trivialaugment", "randaugment")
    policy_ops: int = 2  # randaugment: ops an image
    policy_magnitude: int = 9  # randaugment: bin 0..30
    erasing: float = 0.0  # probability of random erasing an image (0.25 is usual): a box set to the mean
    mixup_alpha: float = 0.0  # mixup, Beta(alpha, alpha) mixing share (0.2 is usual); 0 = off
    cutmix_alpha: float = 0.0  # CutMix (1.0 is usual); 0 = off; with both set, each batch picks one
    mix_prob: float = 1.0  # share of batches mixed when mixup or CutMix is on


@dataclass
class ModelConfig:
    name: str = "cifar_resnet18"  # see `resnetlab models`
    num_classes: int = 0  # 0: as many as the data has; set, it must agree with the data
    weights: str | None = None  # a torchvision weight name (IMAGENET1K_V1, DEFAULT) or a file
    stages: list[int] | None = None  # blocks per stage, for the configurable families
    filters: list[int] | None = None  # stem width, then each stage's output width
    # last BN of each block starts at 0 (Goyal et al. 2017: +0.2-0.3%); null = the family's default
    zero_init_residual: bool | None = None


@dataclass
class OptimConfig:
    name: str = _choice("sgd", "sgd", "adam", "adamw")
    lr: float = 0.1  # peak learning rate for the global batch
    momentum: float = 0.9
    nesterov: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False  # False: BN weights and biases get no weight decay
    grad_clip_norm: float = 0.0  # max global L2 norm of the gradients; 0 = no clipping
    label_smoothing: float = 0.0
    class_weights: str = _choice("none", "none", "balanced")  # balanced: loss weight n / (k * n_class)


@dataclass
class ScheduleConfig:
    name: str = _choice("cosine", "constant", "step", "cosine", "onecycle", "poly", "sgdr")
    warmup_epochs: float = 0.0  # linear warm-up from 0 before the schedule (not for onecycle)
    min_lr_ratio: float = 0.0  # floor, as a fraction of lr (cosine, poly, sgdr)
    milestones: list[float] = field(default_factory=list)  # epochs at which step multiplies by gamma
    gamma: float = 0.1
    power: float = 1.0  # poly: 1 is the linear decay of the Keras recipes
    cycle_len: float = 1.0  # sgdr: epochs in the first cycle
    cycle_mult: float = 2.0  # sgdr: each cycle this many times longer than the last
    pct_start: float = 0.25  # onecycle: share of steps spent rising
    div_factor: float = 25.0  # onecycle: start at lr / div_factor
    final_div_factor: float = 1e4  # onecycle: end at lr / div_factor / final_div_factor


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128  # global: images per optimiser step
    eval_batch_size: int = 512
    precision: str = _choice("auto", "auto", "fp32", "bf16", "fp16")  # auto: bf16 where fast
    channels_last: bool = True  # NHWC: the layout oneDNN and cuDNN convolutions prefer
    device: str = "auto"  # auto (cuda, mps, cpu), or any torch device string
    out_dir: str = "runs"
    name: str = ""  # run folder name under out_dir; default: recipe name and time
    progress: bool = True  # live progress bar; off gives only the per-epoch lines
    checkpoint_every: int = 0  # also save 'last' every N steps (0: at epoch ends only)
    limit_batches: int = 0  # smoke tests: at most N batches an epoch in every split (0: all)
    report: bool = True  # after training: evaluate the test split with figures and write report.html
    final_test: bool = True  # score the test split once at the end; a tuning study turns it off
    tensorboard: bool = True  # also write TensorBoard event files (runs/<name>/tensorboard)
    sync_bn: bool = False  # BatchNorm statistics over the global batch of all processes
    dist_timeout: float = 600.0  # s a collective waits for a peer before failing (a dead rank)
    early_stop_patience: int = 0  # stop after this many epochs without a val top-1 gain; 0 = off
    ema_decay: float = 0.0  # EMA of the weights, per step (0.999 is usual); 0 = off; best.pt, predict, export use it
    early_stop_min_delta: float = 0.0  # a gain counts when above this (top-1 share: 0.001 = 0.1 point)
    # wall clock for the whole run (evaluation and report included), e.g. 90s, 10m, 1h30m: the first
    # steps are timed, then train.epochs and train.steps_per_epoch are set to fill it; "" = off
    time_budget: str = ""
    steps_per_epoch: int = 0  # batches an epoch (0: the whole training split); a time budget sets it
    size_start: int = 0  # progressive resizing: px at the start, up to size_end (0 = off)
    size_end: int = 0  # px training ends at (0: data.image_size, which evaluation always uses)
    size_ramp: list[float] = field(default_factory=lambda: [0.0, 0.75])  # [from, to], shares of the run


@dataclass
class StageConfig:
    """One phase of staged training (fastai's fit_one_cycle / unfreeze / fit(cycle_len...) calls)."""

    epochs: int = 0  # with schedule sgdr, may come from cycles instead
    train: str = "all"  # 'all', 'head', or a layer group: it and every group after it train
    lr: list[float] = field(default_factory=list)  # [lr], or [lo, hi]: first group .. head; empty: optim.lr
    weight_decay: float | None = None  # null: optim.weight_decay
    train_bn: bool = True  # BatchNorm of frozen groups keeps training (fastai's default); false: frozen too
    schedule: str | None = None  # null: schedule.name
    cycle_len: float | None = None  # sgdr, epochs; null: schedule.cycle_len
    cycle_mult: float | None = None  # sgdr; null: schedule.cycle_mult
    cycles: int = 0  # sgdr: this many cycles (sets epochs: 1, 2, 4, 8 epochs for cycle_len 1, mult 2)
    snapshots: bool = False  # save snapshot-K.pt at the end of every sgdr cycle, for ensembling
    precompute: bool = False  # train: head only: compute the frozen backbone's features once, train the head on them
    precompute_views: int = 0  # ... plus this many augmented views (epoch e uses view e mod (views + 1))


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # staged training; when given, train.epochs is the sum of the stages' epochs
    stages: list[StageConfig] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"recipe file {path} does not exist")
        return path
    if (RECIPE_DIR / f"{name_or_path}.yaml").is_file():
        return RECIPE_DIR / f"{name_or_path}.yaml"
    near = difflib.get_close_matches(name_or_path, list_recipes(), n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    raise UserError(f"unknown recipe '{name_or_path}': {hint}`resnetlab recipes` lists them")


def load_config(recipe: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the recipe (a shipped name or a YAML path), then ``key=value`` overrides."""
    cfg = Config()
    if recipe:
        path = recipe_path(recipe)
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise UserError(f"{path} must hold a mapping of sections (data:, model:, ...)")
        update_config(cfg, raw, source=str(path))
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def config_from_dict(raw: dict[str, Any]) -> Config:
    cfg = Config()
    update_config(cfg, raw, source="config")
    validate(cfg)
    return cfg


def update_config(cfg: Config, raw: dict[str, Any], *, source: str) -> None:
    for key, value in _flatten(raw):
        set_value(cfg, key, value, source=source)


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Apply ``key=value`` strings; returns the full keys that were set."""
    done = []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like key=value (e.g. optim.lr=0.05)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        done.append(set_value(cfg, key.strip(), value, source="command line"))
    return done


def all_keys() -> list[str]:
    keys = []
    for f in dataclasses.fields(Config):
        if f.name in _SECTIONS:
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(_SECTIONS[f.name])]
        else:
            keys.append(f.name)
    return keys


_SECTIONS = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
}


def _flatten(raw: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in _SECTIONS:
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def resolve_key(key: str) -> str:
    keys = all_keys()
    if key in keys:
        return key
    leaves = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    if len(leaves) == 1:
        return leaves[0]
    if len(leaves) > 1:
        raise UserError(f"'{key}' is ambiguous: write one of {', '.join(leaves)}")
    near = difflib.get_close_matches(key, keys + [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.5)
    hint = f"; did you mean '{resolve_key(near[0])}'?" if near else ""
    raise UserError(f"unknown config key '{key}'{hint} (`resnetlab train --help-config` lists all keys)")


def key_type(key: str) -> Any:
    """The declared type of a config key (``optim.lr`` -> float), after resolving short names."""
    full = resolve_key(key)
    if "." not in full:
        return typing.get_type_hints(Config)[full]
    section, name = full.split(".")
    return typing.get_type_hints(_SECTIONS[section])[name]


def set_value(cfg: Config, key: str, value: Any, *, source: str) -> str:
    full = resolve_key(key)
    if "." not in full:
        target, name = cfg, full
    else:
        section, name = full.split(".")
        target = getattr(cfg, section)
    f = {g.name: g for g in dataclasses.fields(target)}[name]
    hints = typing.get_type_hints(type(target))
    setattr(target, name, _coerce(value, hints[name], full, source))
    choices = f.metadata.get("choices")
    if choices and getattr(target, name) not in choices:
        near = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.4)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise UserError(f"{full}={value!r} ({source}) is not one of: {', '.join(choices)}; {hint}".rstrip("; "))
    return full


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    bad = UserError(f"{key}={value!r} ({source}) should be {_type_name(tp)}")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} ({source}) should be a list of mappings")
        return [_dataclass_item(v, typing.get_args(tp)[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, str):  # classes=12,13,14,17 on a command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, item, key, source) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def _dataclass_item(value: Any, cls: type, key: str, source: str) -> Any:
    """A mapping -> ``cls``, each field coerced; unknown fields suggest the nearest one."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise UserError(f"{key} ({source}) should be a mapping of {cls.__name__} fields")
    item, hints = cls(), typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name, v in value.items():
        if name not in names:
            near = difflib.get_close_matches(str(name), names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise UserError(f"{key} ({source}) has unknown field '{name}'{hint} (fields: {', '.join(names)})")
        setattr(item, name, _coerce(v, hints[name], f"{key}.{name}", source))
    return item


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, "null" if tp is type(None) else str(tp)
    )


def validate(cfg: Config) -> None:
    """Range checks that a type cannot express; each names the key."""
    checks = [
        (cfg.train.epochs >= 1, "train.epochs must be at least 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (cfg.train.eval_batch_size >= 1, "train.eval_batch_size must be at least 1"),
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


def save_config(cfg: Config, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
