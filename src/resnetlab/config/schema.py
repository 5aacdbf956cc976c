"""The run configuration's sections as typed dataclasses, with their defaults and choices."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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
    cache_dir: str = ""  # the decoded cache, which every memory and disk run reads and fills; "" = $XDG_CACHE_HOME/resnetlab (~/.cache)
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
    # torch.compile the training forward/backward: true, false, or auto (compile where it can, else go on
    # without). The first step pays the compile (~1 min); worth it on long GPU runs, rarely on a 2-core CPU
    compile: str = _choice("false", "false", "true", "auto")
    device: str = "auto"  # auto (cuda, mps, cpu), or any torch device string
    out_dir: str = "runs"
    name: str = ""  # run folder name under out_dir; default: recipe name and time
    progress: bool = True  # live progress bar; off gives only the per-epoch lines
    checkpoint_every: int = 0  # also save 'last' every N steps (0: at epoch ends only)
    limit_batches: int = 0  # smoke tests: at most N batches an epoch in every split (0: all)
    report: bool = True  # after training: evaluate the test split with figures and write report.html
    final_test: bool = True  # score the test split once at the end; a tuning study turns it off
    final_tta: int = 1  # views per test image in that final score (1: none; e.g. 4 adds flipped and shifted views)
    tensorboard: bool = True  # also write TensorBoard event files (runs/<name>/tensorboard)
    sync_bn: bool = False  # BatchNorm statistics over the global batch of all processes
    dist_timeout: float = 600.0  # s a collective waits for a peer before failing (a dead rank)
    early_stop_patience: int = 0  # stop after this many epochs without a val top-1 gain; 0 = off
    ema_decay: float = 0.0  # EMA of the weights, per step (0.999 is usual); 0 = off; best.pt, predict, export use it
    eval_raw: bool = False  # with EMA, also score the raw weights on val each epoch (val_top1_raw): a second pass
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


SECTIONS = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
}
