"""From ``data.dataset`` to train/val/test splits ready for the loaders.

Order of work: resolve the name or path, read the layout, hold out a validation
split (seeded, stratified, saved), decode into the cache (or keep file lists to
stream), settle channels and size, measure mean/std on the training split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from resnetlab.config import Config, DataConfig
from resnetlab.data import builtin
from resnetlab.data.cache import decode_files, mean_std, resize_tensor, set_channels, stack_arrays
from resnetlab.data.cifar import is_cifar_folder, load_cifar_folder
from resnetlab.data.folder import FileList, is_class_folder, list_class_folder
from resnetlab.data.idx import is_idx_folder, load_idx_folder
from resnetlab.errors import UserError
from resnetlab.models.torchvision_resnet import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class Split:
    labels: torch.Tensor  # (N,) int64
    images: torch.Tensor | None = None  # (N, C, S, S) uint8 when cached
    paths: list[str] | None = None  # source files, for folders

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataBundle:
    classes: list[str]
    splits: dict[str, Split]
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    root: str
    cached: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)
    val_ids: list = field(default_factory=list)  # what was held out of train, to save and reuse

    def preprocess(self) -> dict:
        """What a model trained on this data expects: saved with every run and checkpoint."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": self.mean,
            "std": self.std,
        }


def resolve_root(dataset: str) -> Path:
    if dataset in builtin.BUILTIN:
        return builtin.resolve_builtin(dataset)
    root = Path(dataset).expanduser()
    if not root.exists():
        names = ", ".join(builtin.BUILTIN)
        raise UserError(f"data set '{dataset}' is neither a folder that exists nor a known name ({names})")
    if not root.is_dir():
        raise UserError(f"data set path {root} is a file; give the folder that holds the data")
    return root


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices to hold out: round(fraction * n) of each class (at least 1 where a class has 2+)."""
    rng = np.random.default_rng([seed, 0x5EED])
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        k = max(k, 1) if len(idx) > 1 else 0
        held.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)


def build_data(cfg: Config, *, val_ids: list | None = None, progress: bool = True) -> DataBundle:
    """Load ``cfg.data``; ``val_ids`` (from a run's split.json) fixes the held-out files on resume."""
    d = cfg.data
    root = resolve_root(d.dataset)
    if is_idx_folder(root):
        arrays = load_idx_folder(root)
        classes = builtin.CLASS_NAMES.get(d.dataset) or [str(i) for i in range(int(arrays["train"][1].max()) + 1)]
        raw = {k: v for k, v in arrays.items()}
    elif is_cifar_folder(root):
        classes, raw = load_cifar_folder(root)
    elif is_class_folder(root):
        classes, lists = list_class_folder(root)
        raw = lists
    else:
        raise UserError(
            f"{root} is not a data set resnetlab can read: expected class folders, "
            "cifar-10-batches-py, or MNIST IDX files"
        )

    val_ids = _holdout(raw, d, cfg.seed, root, val_ids)
    if isinstance(raw["train"], FileList):
        return _from_files(raw, classes, d, root, val_ids, progress, cfg)
    return _from_arrays(raw, classes, d, root, val_ids, cfg)


def _holdout(raw: dict, d: DataConfig, seed: int, root: Path, val_ids: list | None) -> list:
    """Move a validation split out of train when the layout has none; returns the moved ids."""
    if "val" in raw or (d.val_fraction == 0 and not val_ids):
        return []
    train = raw["train"]
    is_files = isinstance(train, FileList)
    labels = np.asarray(train.labels if is_files else train[1])
    if val_ids:
        if is_files:
            where = {str(Path(p).relative_to(root)): i for i, p in enumerate(train.paths)}
            missing = [v for v in val_ids if v not in where]
            if missing:
                raise UserError(f"saved split names {missing[0]}, which is no longer in {root}")
            held = np.array(sorted(where[v] for v in val_ids), dtype=np.int64)
        else:
            held = np.asarray(sorted(val_ids), dtype=np.int64)
    else:
        held = stratified_holdout(labels, d.val_fraction, seed)
    keep = np.setdiff1d(np.arange(len(labels)), held)
    if is_files:
        raw["val"] = FileList([train.paths[i] for i in held], [train.labels[i] for i in held])
        raw["train"] = FileList([train.paths[i] for i in keep], [train.labels[i] for i in keep])
        return [str(Path(p).relative_to(root)) for p in raw["val"].paths]
    raw["val"] = (train[0][held], train[1][held])
    raw["train"] = (train[0][keep], train[1][keep])
    return held.tolist()


def _normalisation(d: DataConfig, cfg: Config, train_images: torch.Tensor | None, channels: int):
    mode = d.normalize
    if mode == "auto":
        mode = "imagenet" if cfg.model.weights else "dataset"
    if mode == "imagenet":
        if channels == 1:  # grey input to an RGB-trained stem summed over channels
            return [round(sum(IMAGENET_MEAN) / 3, 6)], [round(sum(IMAGENET_STD) / 3, 6)]
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if mode == "half":  # the Keras tutorials' (x - 0.5) / 0.5
        return [0.5] * channels, [0.5] * channels
    if mode == "none":
        return [0.0] * channels, [1.0] * channels
    if train_images is None or len(train_images) == 0:
        raise UserError("no training images to measure mean/std on; set data.normalize=imagenet or half")
    return mean_std(train_images)


def _from_arrays(raw, classes, d: DataConfig, root: Path, val_ids, cfg: Config) -> DataBundle:
    native = raw["train"][0].shape[1]
    channels = d.channels or native
    size = d.image_size or raw["train"][0].shape[-1]
    splits = {}
    for name, (images, labels) in raw.items():
        x = resize_tensor(set_channels(torch.from_numpy(np.ascontiguousarray(images)), channels), size)
        splits[name] = Split(labels=torch.from_numpy(labels).long(), images=x)
    _check_labels(splits, classes, root)
    mean, std = _normalisation(d, cfg, splits["train"].images, channels)
    return DataBundle(classes, splits, channels, size, mean, std, str(root), True, [], val_ids)


def _from_files(raw, classes, d: DataConfig, root: Path, val_ids, progress: bool, cfg: Config) -> DataBundle:
    n = sum(len(v.paths) for v in raw.values())
    size = d.image_size
    channels_guess = d.channels or 3
    estimate = n * channels_guess * max(size, 64) ** 2  # bytes; 64 px when size is 'native'
    cache = d.cache == "memory" or (d.cache == "auto" and estimate <= d.cache_max_gb * 2**30)
    if not cache:
        if size == 0:
            raise UserError("streaming needs a fixed size: set data.image_size=N")
        splits = {
            k: Split(labels=torch.tensor(v.labels, dtype=torch.long), paths=list(v.paths)) for k, v in raw.items()
        }
        channels = channels_guess
        sample = _sample_for_stats(splits["train"], size, d, channels)
        mean, std = _normalisation(d, cfg, sample, channels)
        return DataBundle(classes, splits, channels, size, mean, std, str(root), False, [], val_ids)

    splits, skipped, all_grey = {}, [], True
    decoded = {}
    for name, files in raw.items():
        arrays, greys, kept, bad = decode_files(files.paths, size=size, resize=d.resize, on_bad_image=d.on_bad_image, progress=progress)
        skipped += bad
        all_grey = all_grey and all(greys)
        decoded[name] = (stack_arrays(arrays, files.paths, kept), files, kept)
    sizes = {tuple(x.shape[-2:]) for x, _, _ in decoded.values() if len(x)}
    if len(sizes) > 1:
        raise UserError(f"splits have different image sizes {sorted(sizes)}; set data.image_size=N")
    channels = d.channels or (1 if all_grey else 3)
    for name, (x, files, kept) in decoded.items():
        splits[name] = Split(
            labels=torch.tensor([files.labels[i] for i in kept], dtype=torch.long),
            images=set_channels(x, channels) if len(x) else x[:, :channels],
            paths=[files.paths[i] for i in kept],
        )
    if len(splits["train"]) == 0:
        raise UserError(f"no readable training images in {root} ({len(skipped)} skipped as bad)")
    image_size = splits["train"].images.shape[-1]
    mean, std = _normalisation(d, cfg, splits["train"].images, channels)
    return DataBundle(classes, splits, channels, image_size, mean, std, str(root), True, skipped, val_ids)


def _sample_for_stats(split: Split, size: int, d: DataConfig, channels: int) -> torch.Tensor:
    """Mean/std of a streamed set from a fixed sample of up to 1,000 training images."""
    if d.normalize not in ("auto", "dataset"):
        return None
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(split.paths))[:1000]
    arrays, _, kept, _ = decode_files([split.paths[i] for i in pick], size=size, resize=d.resize, on_bad_image="skip", progress=False)
    return set_channels(stack_arrays(arrays, split.paths, kept), channels) if arrays else None


def _check_labels(splits: dict[str, Split], classes: list[str], root: Path) -> None:
    for name, split in splits.items():
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(classes)):
            raise UserError(
                f"{root}: {name} labels run {int(split.labels.min())}..{int(split.labels.max())} "
                f"but there are {len(classes)} classes"
            )
