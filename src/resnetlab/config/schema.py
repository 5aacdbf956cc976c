"""The run configuration's sections as typed dataclasses, with their defaults and choices."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable


class FrozenConfigError(AttributeError):
    """A validated config was assigned to: build a new one instead (``evolve``)."""


class _Section:
    """A config section: set freely while the config is built (defaults, recipe, overrides, checks),
    read-only once validate() has frozen it. A changed config is a new one (config.evolve)."""

    _frozen = False

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise FrozenConfigError(f"the config is validated and frozen: {type(self).__name__}.{name} cannot be "
                                    "set; make a changed copy with resnetlab.config.evolve")
        object.__setattr__(self, name, value)


def _choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": choices})


def _ranged(default: Any, ok: Callable[[Any], bool], must: str, *, factory: Callable[[], Any] | None = None) -> Any:
    """A field with its range rule beside it: a value for which ``ok`` is false stops the run with the
    one line '<section>.<key> <must>' (config/checks.py applies these, then the rules across fields)."""
    meta = {"ok": ok, "must": must}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


@dataclass
class DataConfig(_Section):
    dataset: str = "fashion-mnist"  # a built-in name, or a folder (any layout resnetlab reads) or CSV
    # several labels an image (a CSV manifest whose label column holds space-separated names, or none):
    # sigmoid outputs, binary cross-entropy, mAP; never guessed from the data
    multi_label: bool = False
    classes: list[str] = field(default_factory=list)  # keep only these (ids or names); empty: all
    # add an 'unknown' class of this many images drawn from the other classes
    unknown_count: int = _ranged(0, lambda v: v >= 0, "must be 0 (off) or more")
    # ... or of this share of the other classes' images
    unknown_fraction: float = _ranged(0.0, lambda v: 0 <= v <= 1, "must be in [0, 1]")
    # px, side of the square the model sees; 0 = the images' own size
    image_size: int = _ranged(0, lambda v: v >= 0, "must be 0 (native) or a size in px")
    # 0 = the data set's own (1 for all-grey data, else 3)
    channels: int = _ranged(0, lambda v: v in (0, 1, 3), "must be 0 (auto), 1 or 3")
    # share of train held out for validation (stratified, seeded)
    val_fraction: float = _ranged(0.0, lambda v: 0 <= v < 1, "must be in [0, 1)")
    val_count: int = _ranged(0, lambda v: v >= 0, "must be 0 (off) or more")  # ... or exactly this many images
    # share of train held out for validation only when the data set has no val split of its own and
    # neither key above is set (stratified, seeded; the photos recipe: 0.2); 0 = off
    auto_val_fraction: float = _ranged(0.0, lambda v: 0 <= v < 1, "must be in [0, 1)")
    # share of train held out as the test split (replaces the layout's)
    test_fraction: float = _ranged(0.0, lambda v: 0 <= v < 1, "must be in [0, 1)")
    split_file: str = ""  # a run's split.csv: reuse its images and splits instead of drawing them
    merge_val: bool = False  # train on train + val: the final model, once the settings are chosen
    roi_crop: bool = False  # crop to the annotated region of interest (GTSRB) before resizing
    # ... widened by this share of its width/height on each side
    roi_margin: float = _ranged(0.1, lambda v: v >= 0, "must be 0 or more")
    sampler: str = _choice("shuffle", "shuffle", "balanced")  # balanced: classes drawn equally often
    resize: str = _choice("squash", "squash", "crop")  # squash to a square, or short side + centre crop
    # auto: memory when it fits, else disk, else stream
    cache: str = _choice("auto", "auto", "memory", "disk", "stream")
    # the decoded cache, which every memory and disk run reads and fills; "" = $XDG_CACHE_HOME/resnetlab
    cache_dir: str = ""
    cache_max_gb: float = 4.0  # GiB of uint8 pixels that 'auto' still keeps in memory
    num_workers: int = 2  # DataLoader workers when streaming
    on_bad_image: str = _choice("skip", "skip", "fail")
    # auto: imagenet with pretrained weights, else dataset (the training split's mean and std per channel);
    # half: (x - 0.5) / 0.5; mean: subtract the training split's channel means, no std; mean_image: subtract
    # its mean image, pixel by pixel, no std (the Keras CIFAR tutorial's); none: x in [0, 1]
    normalize: str = _choice("auto", "auto", "dataset", "imagenet", "half", "mean", "mean_image", "none")


@dataclass
class AugmentConfig(_Section):
    # px of reflect padding for the random crop; 0 turns it off
    crop_padding: int = _ranged(4, lambda v: v >= 0, "must be 0 or more px")
    hflip: bool = True  # random horizontal flip (off for digits and signs with text)
    vflip: bool = False  # random vertical flip (the CIFAR-10 ResNet-50 tutorial's RandomVerticalFlip)
    # with hflip: each training image mirrored in every other epoch, a random half in the first (airbench's
    # alternating flip), instead of a coin flip each epoch
    hflip_alternate: bool = False
    # degrees: uniform in [-rotation, rotation]
    rotation: float = _ranged(0.0, lambda v: 0 <= v <= 180, "must be in [0, 180] degrees")
    # largest zoom-in: scale uniform in [1, zoom] (fastai's max_zoom)
    zoom: float = _ranged(1.0, lambda v: v >= 1, "must be 1 (off) or more")
    # largest zoom-out, as the window's side over the image's: with it, the window side is uniform in
    # [1 / zoom, zoom_out] (Keras' zoom_range=0.15: zoom 1.15, zoom_out 1.15); 1 = zoom in only
    zoom_out: float = _ranged(1.0, lambda v: v >= 1, "must be 1 (off) or more")
    # random shift of up to this share of the width and of the height each way (Keras' width/height_shift_range)
    shift: float = _ranged(0.0, lambda v: 0 <= v < 1, "must be in [0, 1) (a share of the size)")
    # degrees: shear angle uniform in [-shear, shear] (Keras' shear_range)
    shear: float = _ranged(0.0, lambda v: 0 <= v < 90, "must be in [0, 90) degrees")
    # what rotation, zoom-out, shift and shear show beyond the edge: reflect the image, or repeat its
    # edge pixels (nearest: Keras' fill_mode)
    fill: str = _choice("reflect", "reflect", "nearest")
    # brightness and contrast each times 1 +- up to this (fastai's max_lighting)
    lighting: float = _ranged(0.0, lambda v: 0 <= v < 1, "must be in [0, 1)")
    # [b, c]: fastai 0.7's RandomLighting(b, c): up to +-b added to every pixel (on the [0, 1] scale) and a
    # contrast factor between 1 / (1 + c) and 1 + c about the image mean; [] = off
    fastai_lighting: list[float] = _ranged(None, lambda v: not v or (len(v) == 2 and min(v) >= 0),
                                           "must be [] or [b, c] with b, c >= 0", factory=list)
    resized_crop: list[float] = _ranged(  # [min, max] area share: RandomResizedCrop
        None, lambda v: not v or (len(v) == 2 and 0 < v[0] <= v[1] <= 1),
        "must be [] or [min, max] area shares with 0 < min <= max <= 1", factory=list)
    # per image, after the above: TrivialAugmentWide (no settings) or RandAugment (policy_ops ops at
    # policy_magnitude of 31 bins), torchvision's op tables on both the cached and the streamed path
    policy: str = _choice("none", "none", "trivialaugment", "randaugment")
    policy_ops: int = _ranged(2, lambda v: v >= 1, "must be 1 or more")  # randaugment: ops an image
    policy_magnitude: int = _ranged(9, lambda v: 0 <= v <= 30, "must be a bin in [0, 30]")  # randaugment: bin 0..30
    # probability of random erasing an image (0.25 is usual): a box set to the mean
    erasing: float = _ranged(0.0, lambda v: 0 <= v <= 1, "must be a probability in [0, 1]")
    # mixup, Beta(alpha, alpha) mixing share (0.2 is usual); 0 = off
    mixup_alpha: float = _ranged(0.0, lambda v: v >= 0, "must be 0 (off) or positive")
    # CutMix (1.0 is usual); 0 = off; with both set, each batch picks one
    cutmix_alpha: float = _ranged(0.0, lambda v: v >= 0, "must be 0 (off) or positive")
    # share of batches mixed when mixup or CutMix is on
    mix_prob: float = _ranged(1.0, lambda v: 0 <= v <= 1, "must be a probability in [0, 1]")


@dataclass
class ModelConfig(_Section):
    name: str = "cifar_resnet18"  # see `resnetlab models`
    num_classes: int = 0  # 0: as many as the data has; set, it must agree with the data
    weights: str | None = None  # a torchvision weight name (IMAGENET1K_V1, DEFAULT) or a file
    stages: list[int] | None = None  # blocks per stage, for the configurable families
    filters: list[int] | None = None  # stem width, then each stage's output width
    # last BN of each block starts at 0 (Goyal et al. 2017: +0.2-0.3%); null = the family's default
    zero_init_residual: bool | None = None
    # pre-activation family: BatchNorm on the raw input before the stem (the Keras tutorial's first layer);
    # null = the family's default (off)
    input_bn: bool | None = None
    # pre-activation family: the first block of every stage takes the 1x1 conv shortcut from its
    # pre-activation, also where the shape stays (Keras' red=True); null = only where the shape changes
    stage_shortcut: bool | None = None
    # whiten: a frozen 2x2 patch-whitening conv (fitted on ~5,000 training images before the first step) and
    # GELU before the family's own stem (airbench); conv or null: the family's own (airnet: whitening built in)
    stem: str | None = field(default=None, metadata={"choices": ("conv", "whiten")})
    # every stride-1 3x3 conv starts passing its first min(in, out) channels through (airbench's Dirac init)
    dirac_init: bool = False
    # BatchNorm weights (scales) fixed at 1, only the biases train (airbench); false: both train
    freeze_bn_weight: bool = False
    # share of each batch's statistics in BatchNorm's running ones (PyTorch's convention: airbench's 0.6 is 0.4)
    bn_momentum: float = _ranged(0.1, lambda v: 0 < v <= 1, "must be in (0, 1] (PyTorch's default is 0.1)")
    # epochs the whitening stem's bias trains before it stays where it is (airbench94: 3); 0: it trains throughout
    whiten_bias_epochs: float = _ranged(0.0, lambda v: v >= 0, "must be 0 (trains throughout) or more")


@dataclass
class OptimConfig(_Section):
    name: str = _choice("sgd", "sgd", "adam", "adamw")
    lr: float = _ranged(0.1, lambda v: v > 0, "must be positive")  # peak learning rate for the global batch
    momentum: float = 0.9
    nesterov: bool = True
    betas: list[float] = _ranged(None, lambda v: len(v) == 2, "must be two numbers, e.g. [0.9, 0.999]",
                                 factory=lambda: [0.9, 0.999])
    weight_decay: float = _ranged(5e-4, lambda v: v >= 0, "must be 0 or more")
    decay_norm_and_bias: bool = False  # False: BN weights and biases get no weight decay
    # max global L2 norm of the gradients; 0 = no clipping
    grad_clip_norm: float = _ranged(0.0, lambda v: v >= 0, "must be 0 (off) or more")
    # clip every gradient element to [-v, v] (Keras' clipvalue, PyTorch's clip_grad_value_), before the
    # norm clip; 0 = off
    grad_clip_value: float = _ranged(0.0, lambda v: v >= 0, "must be 0 (off) or more")
    label_smoothing: float = _ranged(0.0, lambda v: 0 <= v < 1, "must be in [0, 1)")
    # BatchNorm biases' learning rate x this, their weight decay / this so each step's decay is unchanged
    # (airbench's 64, with frozen BN weights); 1 = as every other parameter
    bn_bias_lr_scale: float = _ranged(1.0, lambda v: v > 0, "must be positive (1: as every other parameter)")
    class_weights: str = _choice("none", "none", "balanced")  # balanced: loss weight n / (k * n_class)


@dataclass
class ScheduleConfig(_Section):
    # triangle (airbench's): linear from lr / div_factor up to lr at pct_start of the run, then linear down to
    # lr * min_lr_ratio at its end
    name: str = _choice("cosine", "constant", "step", "cosine", "onecycle", "poly", "sgdr", "triangle")
    # linear warm-up from 0 before the schedule; onecycle: the rise, in epochs, in place of pct_start (a time
    # budget sets it, so the rise does not move when the run's length is corrected)
    warmup_epochs: float = _ranged(0.0, lambda v: v >= 0, "must be 0 or more")
    # floor, as a fraction of lr (cosine, poly, sgdr)
    min_lr_ratio: float = _ranged(0.0, lambda v: 0 <= v <= 1, "must be in [0, 1]")
    milestones: list[float] = field(default_factory=list)  # epochs at which step multiplies by gamma
    gamma: float = 0.1
    power: float = 1.0  # poly: 1 is the linear decay of the Keras recipes
    cycle_len: float = _ranged(1.0, lambda v: v > 0, "must be positive")  # sgdr: epochs in the first cycle
    # sgdr: each cycle this many times longer than the last
    cycle_mult: float = _ranged(2.0, lambda v: v >= 1, "must be 1 or more")
    pct_start: float = _ranged(0.25, lambda v: 0 < v < 1, "must be in (0, 1)")  # onecycle: share of steps spent rising
    div_factor: float = 25.0  # onecycle: start at lr / div_factor
    final_div_factor: float = 1e4  # onecycle: end at lr / div_factor / final_div_factor


@dataclass
class TrainConfig(_Section):
    epochs: int = _ranged(10, lambda v: v >= 1, "must be at least 1")
    batch_size: int = _ranged(128, lambda v: v >= 1, "must be at least 1")  # global: images per optimiser step
    eval_batch_size: int = _ranged(512, lambda v: v >= 1, "must be at least 1")
    precision: str = _choice("auto", "auto", "fp32", "bf16", "fp16")  # auto: bf16 where fast
    channels_last: bool = True  # NHWC: the layout oneDNN and cuDNN convolutions prefer
    # torch.compile the training forward/backward: true, false, or auto (compile where it can, else go on
    # without). The first step pays the compile (~1 min); worth it on long GPU runs, rarely on a 2-core CPU
    compile: str = _choice("false", "false", "true", "auto")
    device: str = "auto"  # auto (cuda, mps, cpu), or any torch device string
    out_dir: str = "runs"
    name: str = ""  # run folder name under out_dir; default: recipe name and time
    progress: bool = True  # live progress bar; off gives only the per-epoch lines
    # also keep epoch_NNN.pt every N epochs, to roll back to with `train --resume RUN --from-epoch NNN` (the
    # Keras tutorials' ctrl+c method); 0 = off
    keep_every: int = _ranged(0, lambda v: v >= 0, "must be 0 (off) or more epochs")
    # also save 'last' every N steps (0: at epoch ends only)
    checkpoint_every: int = _ranged(0, lambda v: v >= 0, "must be 0 (off) or more steps")
    # s between writes of last.pt at epoch ends, in the background from a snapshot of the state; also
    # written at the first epoch end, the run's end and a stop (best.pt with it, held in memory until then);
    # 0: every epoch end. A kill (SIGKILL, power loss) loses at most this much training
    checkpoint_interval_s: float = _ranged(60.0, lambda v: v >= 0, "must be 0 (every epoch end) or more seconds")
    # smoke tests: at most N batches an epoch in every split, and N batches' worth spread over the final test and
    # the calibration's val split (0: all)
    limit_batches: int = _ranged(0, lambda v: v >= 0, "must be 0 (all) or more")
    report: bool = True  # after training: evaluate the test split with figures and write report.html
    final_test: bool = True  # score the test split once at the end; a tuning study turns it off
    # views per test image in that final score (1: none; e.g. 4 adds flipped and shifted views)
    final_tta: int = _ranged(1, lambda v: v >= 1, "must be at least 1 (1: no test-time augmentation)")
    # which views: random (the image, its mirror, then training augmentations; probabilities averaged) or
    # fixed (airbench's: the image and 1 px diagonal shifts each way, each with its mirror where training flips;
    # logits averaged, the unshifted pair weighted half; final_tta 2 or 6, or 3 without flips)
    final_tta_views: str = _choice("random", "random", "fixed")
    tensorboard: bool = True  # also write TensorBoard event files (runs/<name>/tensorboard)
    # also log the run to these experiment trackers (each an optional extra: pip install 'resnetlab[mlflow]'):
    # the config as params, every epoch's metrics, the test metrics, figures, report and best checkpoint.
    # Where to: $MLFLOW_TRACKING_URI and $MLFLOW_EXPERIMENT_NAME, $WANDB_PROJECT and $WANDB_MODE; [] = none
    log_to: list[str] = field(default_factory=list, metadata={"choices": ("mlflow", "wandb")})
    sync_bn: bool = False  # BatchNorm statistics over the global batch of all processes
    dist_timeout: float = 600.0  # s a collective waits for a peer before failing (a dead rank)
    # stop after this many epochs without a val top-1 gain; 0 = off
    early_stop_patience: int = _ranged(0, lambda v: v >= 0, "must be 0 (off) or more epochs")
    # EMA of the weights, per step (0.999 is usual); 0 = off; best.pt, predict, export use it
    ema_decay: float = _ranged(0.0, lambda v: 0 <= v < 1, "must be in (0, 1) (0.999 is usual), or 0 for no EMA")
    # Lookahead with the EMA as the slow weights (airbench's): every N steps the EMA takes one step of decay
    # ema_decay^N x (step / run's steps)^3 (averaging strengthens as the run ends) and the weights are set to
    # it, and again at each epoch's end; 0 = off (the EMA then averages every step on its own)
    lookahead: int = _ranged(0, lambda v: v >= 0, "must be 0 (off) or a number of steps (airbench: 5)")
    # also score this split every epoch, for the curves, the epoch line and TensorBoard only (the tutorials
    # watch test so); it never chooses a checkpoint or stops a run; "" = off
    monitor: str = _choice("", "", "test")
    # score val with the model as built, before its first step (the Intel tutorial's first look: about 1 /
    # classes for a new head), printed and kept in untrained.json
    score_untrained: bool = False
    eval_raw: bool = False  # with EMA, also score the raw weights on val each epoch (val_top1_raw): a second pass
    # a gain counts when above this (top-1 share: 0.001 = 0.1 point)
    early_stop_min_delta: float = _ranged(0.0, lambda v: 0 <= v < 1, "must be in [0, 1) (a top-1 share)")
    # wall clock for the whole run (evaluation and report included), e.g. 90s, 10m, 1h30m: the first
    # steps are timed, then train.epochs and train.steps_per_epoch are set to fill it; "" = off
    time_budget: str = ""
    # candidates the time budget chooses from, most capable first: each a mapping of config keys to values,
    # e.g. [{model.filters: [32, 64, 128, 256]}, {model.filters: [16, 32, 64, 128]}]. Each rung's steps are
    # timed on this machine; the first that gets ladder_min_epochs epochs in the budget trains (else the one
    # that gets the most). budget.json keeps the table it chose from
    ladder: list[dict] = field(default_factory=list)
    ladder_min_epochs: int = _ranged(1, lambda v: v >= 1, "must be at least 1")
    # pin the time budget to one rung of train.ladder (its index; -1: the ladder's rule chooses)
    ladder_rung: int = _ranged(-1, lambda v: v >= -1, "must be -1 (the rule chooses) or a rung's index")
    # the time budget reads each rung's timings from the probe cache (<data.cache_dir>/probe, by machine,
    # torch, code and config) when a run timed them before; false times every rung anew and stores that
    probe_cache: bool = True
    # the run's last optimiser step, inside its last epoch (0: every step of train.epochs); the schedule ends
    # there. A time budget sets it when the run corrects its length from its own clock
    max_steps: int = _ranged(0, lambda v: v >= 0, "must be 0 (every step of train.epochs) or more")
    # [[step, end], ...]: where a time budget moved the run's end late in the run, re-laying what was left of the
    # schedule. At each ``step`` the run that was to end at ``end`` ends at the next entry's ``end``, or at
    # train.max_steps; the schedule laid over the first ``end`` steps is spread over the new steps from there, so
    # a replay of config.yaml trains the same run (budget/correction.py)
    end_moves: list[list[int]] = _ranged(
        None, lambda v: all(len(m) == 2 and 0 < m[0] < m[1] for m in v)
        and [m[0] for m in v] == sorted({m[0] for m in v}),
        "must be [[step, end], ...] with 0 < step < end, the steps increasing", factory=list)
    # leave out the last images of each epoch's shuffled order that do not fill a batch (a different few
    # each epoch), so every step has one shape: one torch.compile graph and one cuDNN plan (airbench's way).
    # false: they join the epoch's last batch, so every image is seen every epoch
    drop_last: bool = False
    # batches an epoch (0: the whole training split); a time budget sets it
    steps_per_epoch: int = _ranged(0, lambda v: v >= 0, "must be 0 (all) or more")
    # progressive resizing: px at the start, up to size_end (0 = off)
    size_start: int = _ranged(0, lambda v: v >= 0, "must be 0 (off) or a size in px")
    # px training ends at (0: data.image_size, which evaluation always uses)
    size_end: int = _ranged(0, lambda v: v >= 0, "must be 0 (data.image_size) or a size in px")
    size_ramp: list[float] = _ranged(  # [from, to], shares of the run
        None, lambda v: len(v) == 2 and 0 <= v[0] <= v[1] <= 1,
        "must be [from, to], shares of the run with 0 <= from <= to <= 1", factory=lambda: [0.0, 0.75])


@dataclass
class StageConfig(_Section):
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
class Config(_Section):
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

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> Config:
        """Make this config and every section read-only (validate() does, as its last step)."""
        for part in (self, *(getattr(self, name) for name in SECTIONS), *self.stages):
            object.__setattr__(part, "_frozen", True)
        return self

    def thawed(self) -> Config:
        """A deep copy that can be set again (and must be validated again)."""
        out = copy.deepcopy(self)
        for part in (out, *(getattr(out, name) for name in SECTIONS), *out.stages):
            object.__setattr__(part, "_frozen", False)
        return out


SECTIONS = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
}
