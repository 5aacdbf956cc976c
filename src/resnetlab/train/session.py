"""What a training run holds (Session), the builders of its parts, and its checkpoint state.

run/prepare.py puts these together for a run: data, then the time budget's plan, then the
session, then the run folder.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resnetlab.checkpoint import rng_state
from resnetlab.config import AugmentConfig, Config, OptimConfig
from resnetlab.data import CachedLoader, DataBundle, FileDataset, Split, StreamLoader
from resnetlab.data.archive import shard_of
from resnetlab.data.augment import BatchAugment, flip_sides, normalize
from resnetlab.errors import UserError
from resnetlab.evaluate.task import SingleLabel, balanced_weights, task_of_config
from resnetlab.models import get_model, model_entry
from resnetlab.models.groups import first_trained, layer_groups
from resnetlab.models.tuning import bn_biases, dirac_init, set_batchnorm
from resnetlab.models.whitening import fit_whitening, whitening_layer
from resnetlab.train import distributed
from resnetlab.train.distributed import Dist
from resnetlab.train.ema import ModelEma

SEEN = 2  # the images-seen index of an epoch's running sums (evaluate/task.py keeps them)


def no_sums() -> list[float]:
    return [0.0, 0.0, 0.0]


def val_score(record: dict) -> float:
    """What chooses best.pt and early stopping: val mAP (macro) for multi-label, else val top-1."""
    return record.get("val_map", record.get("val_top1", math.nan))


@dataclass
class TrainState:
    """What changes while training, checkpointed as a whole: where training continues (an epoch, a
    step within it, and that epoch's running sums so far), every finished epoch's record, the best
    val score (top-1, or mAP for multi-label: ``val_score``), which best.pt holds, and the step the
    run ends at when a time budget's correction moved it. The training loop is its only writer; a
    resume builds it from a checkpoint (``from_checkpoint``)."""

    epoch: int = 0
    step: int = 0  # within ``epoch``: a mid-epoch checkpoint continues there
    partial: list[float] = field(default_factory=no_sums)  # LOSS, CORRECT, SEEN of ``epoch`` so far
    history: list[dict] = field(default_factory=list)
    best_score: float = -1.0  # the best val_score
    # not checkpointed: the global step the run ends at once a time budget's correction moved it (0: the
    # config's) and the moves late in the run (loop.RunEnd), which config.yaml records as train.max_steps and
    # train.end_moves for a resume; and whether the last finished epoch set a new best
    end_step: int = field(default=0, compare=False)
    end_moves: tuple[tuple[int, int], ...] = field(default=(), compare=False)
    improved: bool = field(default=False, compare=False)

    def end_epoch(self, record: dict) -> bool:
        """Keep a finished epoch's record and point at the next epoch's start; True when its val score
        beat the best (best.pt is chosen on validation only: without a val split nothing improves)."""
        score = val_score(record)
        self.improved = not math.isnan(score) and score > self.best_score
        self.history.append(record)
        self.epoch, self.step, self.partial = record["epoch"], 0, no_sums()
        self.best_score = score if self.improved else self.best_score
        return self.improved

    def checkpoint(self, steps_per_epoch: int) -> dict[str, Any]:
        # at an epoch's start, the steps the finished epochs took (train.max_steps may have ended the last one early)
        done = self.history[-1]["step"] if self.history and not self.step else self.epoch * steps_per_epoch + self.step
        return {"epoch": self.epoch, "step_in_epoch": self.step, "global_step": done,
                "partial": list(self.partial), "history": self.history, "best_score": self.best_score}

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> TrainState:
        # checkpoints before best_score named it best_top1 (it held mAP for multi-label runs too)
        best = state["best_score"] if "best_score" in state else state["best_top1"]
        return cls(state["epoch"], state["step_in_epoch"], list(state["partial"]), list(state["history"]), best)


@dataclass
class RunClock:
    """What a time budget counts: s since the command (or prepare()) began, less any time a caller ran outside the run
    (``paused``: a benchmark scoring each epoch on its own clock)."""

    started: float = field(default_factory=time.monotonic)
    outside_s: float = 0.0

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started - self.outside_s

    @contextlib.contextmanager
    def paused(self):
        start = time.monotonic()
        try:
            yield
        finally:
            self.outside_s += time.monotonic() - start


@dataclass(frozen=True)
class Session:
    cfg: Config
    data: DataBundle
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    device: torch.device
    precision: str
    loaders: dict[str, Any]  # split name -> CachedLoader | StreamLoader
    mean: torch.Tensor  # (C,) on the device, [0, 1] units
    std: torch.Tensor
    run_dir: Path
    state: TrainState = field(default_factory=TrainState)  # what training changes: the loop writes, checkpoints keep
    dist: Dist = field(default_factory=Dist)
    ddp: nn.Module | None = None  # the DistributedDataParallel wrapper when there are 2+ ranks
    compiled: nn.Module | None = None  # torch.compile of the model (or its DDP wrapper), train.compile
    # (k,) optim.class_weights=balanced: the loss weight of each class; multi-label: of each class's
    # positives (BCE's pos_weight), so a rare label's few positives weigh as much as its negatives
    class_weights: torch.Tensor | None = None
    notes: tuple[str, ...] = ()  # what fit() should tell the user first (e.g. a resume fallback)
    ema: ModelEma | None = None  # the weights' moving average, train.ema_decay
    # budget.plan.Plan: how train.time_budget set this run's rung and length (None: no budget); typed
    # loosely because the budget package sits above this one (run/ reads it)
    plan: object | None = None
    clock: RunClock = field(default_factory=RunClock)  # from the command's start: what train.time_budget counts
    task: SingleLabel = field(default_factory=SingleLabel)  # single- or multi-label (evaluate/task.py)

    @property
    def net(self) -> nn.Module:
        """What the training step calls: compiled, else the DDP wrapper, else the model itself."""
        if self.compiled is not None:
            return self.compiled
        return self.ddp if self.ddp is not None else self.model

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loaders["train"])


def model_options(cfg: Config) -> dict[str, Any]:
    m = cfg.model
    return {"stages": m.stages, "filters": m.filters, "zero_init_residual": m.zero_init_residual,
            "input_bn": m.input_bn, "stage_shortcut": m.stage_shortcut, "stem": m.stem}


def build_model(cfg: Config, data: DataBundle, *, pretrained: bool = True) -> nn.Module:
    entry = model_entry(cfg.model.name)
    if data.image_size < entry.min_size:
        raise UserError(f"{cfg.model.name} needs images of at least {entry.min_size} px (it downsamples them "
                        f"to 1 px before its last stage); set data.image_size={entry.default_size} or more")
    for key in ("size_start", "size_end"):
        px = getattr(cfg.train, key)
        if px and px < entry.min_size:
            raise UserError(f"train.{key}={px} is below the {entry.min_size} px {cfg.model.name} needs; "
                            f"set it to {entry.min_size} or more")
    if cfg.model.num_classes and cfg.model.num_classes != len(data.classes):
        raise UserError(
            f"model.num_classes={cfg.model.num_classes} but {data.root} has {len(data.classes)} classes; "
            "set model.num_classes=0 to follow the data"
        )
    model = get_model(
        cfg.model.name,
        num_classes=len(data.classes),
        in_chans=data.channels,
        weights=cfg.model.weights if pretrained else None,
        **model_options(cfg),
    )
    if cfg.model.dirac_init:
        dirac_init(model)
    set_batchnorm(model, momentum=cfg.model.bn_momentum, freeze_weight=cfg.model.freeze_bn_weight)
    layer = whitening_layer(model)
    if cfg.model.whiten_bias_epochs and layer is None:
        raise UserError(f"model.whiten_bias_epochs is for a whitening stem, which {cfg.model.name} has not: set "
                        "model.stem=whiten too, or model.whiten_bias_epochs=0")
    if pretrained and layer is not None:  # else a checkpoint brings the fitted stem
        fit_whitening(layer, whitening_images(data, cfg))
    return model


WHITEN_IMAGES = 5000  # airbench fits its stem on 5,000 CIFAR-10 images: ~4.8M 2x2 patches for 12 directions


def whitening_images(data: DataBundle, cfg: Config) -> torch.Tensor:
    """Up to WHITEN_IMAGES training images, seeded, normalised as training normalises them, at the
    training size: float (N, C, H, W)."""
    split = data.splits["train"]
    n = len(split.labels)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))[:WHITEN_IMAGES]
    if split.images is not None:
        images = split.images[pick]
    else:  # streamed: read the chosen files once
        files = FileDataset(split.paths, split.labels, size=data.image_size, resize=cfg.data.resize,
                            channels=data.channels, boxes=split.boxes, margin=cfg.data.roi_margin)
        images = torch.stack([files[int(i)][0] for i in pick])
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    return normalize(images, mean, std, channels_last=False)


def build_optimizer(model: nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    """Two parameter groups per layer group (stem, layer1, ..., head): with and without weight decay.
    Stages set each group's ``lr_scale`` (discriminative rates) and freeze groups by requires_grad."""
    groups, fast = [], bn_biases(model) if o.bn_bias_lr_scale != 1 else set()
    whiten = whitening_layer(model)

    def group(params: list, name: str, wd_scale: float, lr_scale: float = 1.0, **mark) -> dict:
        return {"params": params, "weight_decay": o.weight_decay * wd_scale, "layer_group": name,
                "wd_scale": wd_scale, "lr_scale": lr_scale, **mark}

    for name, modules in layer_groups(model):
        decay, no_decay, biases = [], [], []
        for m in modules:
            for p in m.parameters():
                # BN scales and biases (1-d) gain nothing from decay and lose accuracy with it
                plain = no_decay if p.ndim <= 1 and not o.decay_norm_and_bias else decay
                if whiten is not None and p is whiten.bias:  # a group of its own: it may stop early (loop.py)
                    groups.append(group([p], name, 1.0 if plain is decay else 0.0, whiten_bias=True))
                else:
                    (biases if id(p) in fast else plain).append(p)
        for params, wd_scale in ((decay, 1.0), (no_decay, 0.0)):
            if params:
                groups.append(group(params, name, wd_scale))
        if biases:  # airbench: BN biases at a higher rate, decayed by the same amount each step
            groups.append(group(biases, name, 1 / o.bn_bias_lr_scale if o.decay_norm_and_bias else 0.0,
                                o.bn_bias_lr_scale))
    # on a GPU one fused kernel updates every tensor (the default foreach path launches several per
    # group); the CPU keeps the default, which the bit-identity tests were written against
    fused = {"fused": True} if all(p.is_cuda for g in groups for p in g["params"]) else {}
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0, **fused)
    if o.name == "adam":  # L2 added to the gradient, as torch.optim.Adam does
        return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas), **fused)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), **fused)


def make_loader(split: Split, data: DataBundle, cfg: Config, device: torch.device, *, train: bool,
                dist: Dist | None = None):
    if dist is None:
        dist = Dist()  # one process
    batch = cfg.train.batch_size if train else cfg.train.eval_batch_size
    limit = cfg.train.limit_batches
    if train and cfg.train.steps_per_epoch:
        limit = min(limit or cfg.train.steps_per_epoch, cfg.train.steps_per_epoch)
    # training: a short last batch joins the one before, or with train.drop_last is left out (one shape)
    tail = ("drop" if cfg.train.drop_last else "merge") if train else "keep"
    common = dict(batch_size=batch, device=device, seed=cfg.seed, shuffle=train, tail=tail, rank=dist.rank,
                  world=dist.world, limit=limit)
    if train and cfg.data.sampler == "balanced":
        common["sample_weights"] = balanced_weights(split.labels, len(data.classes))[split.labels]
    augment = train_augment(cfg, data, len(split.labels)) if train else None
    if split.images is not None:
        return CachedLoader(split.images, split.labels, augment=augment, **common)
    dataset = FileDataset(split.paths, split.labels, size=data.image_size, resize=cfg.data.resize,
                          channels=data.channels, boxes=split.boxes, margin=cfg.data.roi_margin)
    groups = shard_of(split.paths) if train and dist.world > 1 else None  # ranks read disjoint shards
    return StreamLoader(dataset, num_workers=cfg.data.num_workers, on_bad_image=cfg.data.on_bad_image, augment=augment,
                        groups=None if groups is None else torch.from_numpy(groups), **common)


def smoke_images(cfg: Config) -> int:
    """The images a smoke test (train.limit_batches) validates and scores in each split: that many batches of
    eval_batch_size; 0: all. The budget's plan costs them (budget/probe.py); validation and the run's finish
    take them (smoke_splits)."""
    return cfg.train.limit_batches * cfg.train.eval_batch_size


def smoke_splits(cfg: Config, splits: dict[str, Split]) -> dict[str, Split]:
    """The splits a run validates and scores: in a smoke test, each but train cut to smoke_images(cfg) images
    spread through it (a folder's split is in class order: its first batches would be one class)."""
    n = smoke_images(cfg)
    return {name: split.spread(n) if n and name != "train" else split for name, split in splits.items()}


def train_augment(cfg: Config, data: DataBundle, count: int, augment: AugmentConfig | None = None) -> BatchAugment:
    """The training split's augmentation (``augment``, else cfg.augment) for its ``count`` images:
    erased pixels in what normalises to 0, alternating flips with hflip_alternate (validate()
    refuses that without hflip)."""
    augment = augment or cfg.augment
    mean = torch.tensor(data.mean, dtype=torch.float64)  # (C,), or a mean image (C, H, W): its channels'
    fill = tuple(round(255 * m) for m in (mean.flatten(1).mean(1) if mean.dim() == 3 else mean).tolist())
    sides = flip_sides(count, cfg.seed) if augment.hflip_alternate else None
    return BatchAugment(augment, num_classes=len(data.classes), fill=fill, sides=sides)


def build_session(cfg: Config, data: DataBundle, *, device: torch.device, precision: str, dist: Dist,
                  compile_wanted: bool, pretrained: bool = True, run_dir: Path = Path(),
                  started: float | None = None) -> Session:
    """Model, optimiser, loaders, EMA and the process wrappers for ``cfg`` on ``data``: the run's own
    session, and the time budget's probes (one per ladder rung, timed and thrown away)."""
    model = build_model(cfg, data, pretrained=pretrained)
    for st in cfg.stages:  # a stage naming a group the model lacks fails before any folder is made
        first_trained(model, st.train)
    if cfg.train.sync_bn and (dist.enabled or device.type == "cpu"):  # on CPU: the same BN for any rank count
        model = distributed.convert_sync_batchnorm(model, device)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    loaders = {name: make_loader(split, data, cfg, device, train=name == "train", dist=dist)
               for name, split in smoke_splits(cfg, data.splits).items()}
    ema = ModelEma(model, cfg.train.ema_decay) if cfg.train.ema_decay else None
    task = task_of_config(cfg)
    class_weights = None
    if cfg.optim.class_weights == "balanced":
        class_weights = task.loss_weights(data.splits["train"].labels, len(data.classes)).to(device)
    ddp = None
    if dist.enabled:  # gradients averaged across ranks; parameters broadcast from rank 0 once
        # stages freeze groups after DDP is built: let it skip parameters that get no gradient
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=bool(cfg.stages))
    # dynamic=False: one graph per input shape; an epoch's batches have at most two shapes (the last one
    # holds the merged tail; one with train.drop_last), so it compiles once or twice per training size
    compiled = torch.compile(ddp or model, dynamic=False) if compile_wanted else None
    return Session(cfg, data, model, optimizer, torch.amp.GradScaler(device.type) if precision == "fp16" else None,
                   device, precision, loaders, torch.tensor(data.mean, device=device),
                   torch.tensor(data.std, device=device), run_dir, dist=dist, ddp=ddp, compiled=compiled,
                   class_weights=class_weights, ema=ema, task=task,
                   clock=RunClock(time.monotonic() if started is None else started))


def checkpoint_state(s: Session, state: TrainState | None = None) -> dict[str, Any]:
    """Everything a resume or a prediction needs: weights, optimiser, and the training state (the
    session's own, or ``state``: a mid-epoch position not yet the session's)."""
    return {
        "model": s.model.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler else None,
        "ema": s.ema.state_dict() if s.ema else None,  # predict, export and the final test use these weights
        **(state or s.state).checkpoint(s.steps_per_epoch),
        "rng": rng_state(),
        "model_name": s.cfg.model.name,
        "model_options": model_options(s.cfg),
        "num_classes": len(s.data.classes),
        "task": s.task.name,  # sigmoid or softmax outputs
        "in_chans": s.data.channels,
        "classes": s.data.classes,
        "preprocess": s.data.preprocess(),
        "config": run_config(s),
    }


def corrected_length(end_step: int, moves: tuple, steps_per_epoch: int) -> dict[str, object]:
    """The keys a time budget's correction sets, as overrides: its end as train.max_steps, the epochs that
    reach it, and each late move of the end (the schedule's re-laying, so a replay trains the same weights)."""
    return {"train.max_steps": end_step, "train.epochs": math.ceil(end_step / steps_per_epoch),
            "train.end_moves": [list(move) for move in moves]}


def run_moves(s: Session) -> tuple | list:
    """Where a time budget moved the run's end late in the run (train.end_moves), as this run's corrections left
    them, else as the config gives them (a replay, a resume)."""
    return s.state.end_moves or s.cfg.train.end_moves


def run_config(s: Session) -> dict:
    """The config the run trains, as a dict, as config.yaml records it: with a time budget's corrections."""
    config = s.cfg.to_dict()
    if s.state.end_step:
        for key, value in corrected_length(s.state.end_step, run_moves(s), s.steps_per_epoch).items():
            config["train"][key.removeprefix("train.")] = value
    return config
