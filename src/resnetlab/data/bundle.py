"""From ``data.dataset`` to train/val/test splits ready for the loaders.

Order of work: read the layout into a catalog, keep the chosen classes (and draw
the unknown class), hold out val/test (seeded, stratified, whole tracks) or take
them from a split file, decode into the cache (or keep file lists to stream),
settle channels and size, measure mean/std on the training split.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from resnetlab.config import Config, DataConfig
from resnetlab.data.catalog import Catalog
from resnetlab.data.decode import decode_files, mean_image, mean_std, resize_tensor, set_channels, stack_arrays
from resnetlab.data.readers import builtin
from resnetlab.data.readers.layouts import read_catalog, resolve_root
from resnetlab.data.readers.manifest import apply_split_file, read_manifest
from resnetlab.data.split import class_lists, drop_unseen_labels, final_classes, hold_out, select
from resnetlab.errors import UserError

# torchvision's ImageNet statistics: a model with ImageNet weights expects its input normalised so
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Split:
    labels: torch.Tensor  # (N,) int64; multi-label: (N, K) float32 multi-hot
    images: torch.Tensor | None = None  # (N, C, S, S) uint8 when cached (a DiskImages with data.cache=disk)
    paths: list[str] | None = None  # source files, for folders
    boxes: np.ndarray | None = None  # (N, 4) regions to crop to when streaming, if data.roi_crop

    def __len__(self) -> int:
        return len(self.labels)

    def spread(self, n: int) -> Split:
        """``n`` images evenly spaced through the split: what a smoke test (train.limit_batches) scores.
        Evenly spaced, not the first n: a folder's split is in class order, and the first would be one class."""
        if n >= len(self):
            return self
        rows = np.linspace(0, len(self) - 1, n).round().astype(np.int64)
        return Split(self.labels[torch.from_numpy(rows)], None if self.images is None else self.images[rows],
                     None if self.paths is None else [self.paths[i] for i in rows],
                     None if self.boxes is None else self.boxes[rows])


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
    catalog: Catalog | None = None  # the rows used, with their splits: written as the run's split.csv
    notes: list[str] = field(default_factory=list)

    def preprocess(self) -> dict:
        """What a model trained on this data expects: saved with every run and checkpoint."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": self.mean,
            "std": self.std,
        }

    def balance(self) -> str:
        """One line on class sizes in train, so a user sees when weighting or a balanced sampler fits."""
        counts = self.counts()["train"]
        lo, hi = min(counts), max(counts)
        least, most = self.classes[counts.index(lo)], self.classes[counts.index(hi)]
        if self.multi_label:
            return f"train images a label: {lo} ({least}) to {hi} ({most}); per-label counts in the run's data.json"
        ratio = f"{hi / lo:.1f}x" if lo else "a class has none"
        return (f"train images a class: {lo} ({least}) to {hi} ({most}), {ratio}; "
                "per-class counts in the run's data.json")

    def counts(self) -> dict[str, list[int]]:
        """Images per class per split, after any bad files were skipped (multi-label: images carrying it)."""
        k = len(self.classes)
        if self.multi_label:
            return {name: s.labels.sum(0).round().long().tolist() for name, s in self.splits.items()}
        return {name: torch.bincount(s.labels, minlength=k).tolist() for name, s in self.splits.items()}

    @property
    def multi_label(self) -> bool:
        return any(s.labels.ndim == 2 for s in self.splits.values())


def read_label_sets(dataset: str) -> tuple[Catalog, Path, dict[str, int]]:
    """read_catalog for a multi-label run: label sets come only from a CSV manifest, as every other
    layout has one class an image (a built-in name is refused before it is downloaded)."""
    root = None if dataset in builtin.BUILTIN else resolve_root(dataset)
    if root is None or not root.is_file():
        raise UserError(f"data.multi_label=true needs label sets, and {dataset} has one class an image: give a "
                        "CSV manifest with a header, e.g. image_name,tags with labels separated by spaces")
    return read_manifest(root, multi_label=True), root.parent, {}


def plan_data(cfg: Config, *, split_file: Path | None = None) -> tuple[Catalog, Path, list[str]]:
    """The rows a run uses, each with its final label and split; the root; notes for the user."""
    d = cfg.data
    catalog, root, aliases = read_label_sets(d.dataset) if d.multi_label else read_catalog(d.dataset)
    notes = list(catalog.notes)
    chosen, unknown = final_classes(catalog, d, aliases)
    split_file = split_file or (Path(d.split_file) if d.split_file else None)
    if split_file is not None:
        classes, ids = class_lists(catalog, chosen, unknown)
        catalog = apply_split_file(catalog, split_file, classes)
        catalog.class_ids = ids
    else:
        catalog = select(catalog, chosen, unknown, d, cfg.seed)
        catalog, held_notes = hold_out(catalog, d, cfg.seed)
        notes += held_notes
    if d.merge_val:
        catalog.splits[catalog.splits == "val"] = "train"
    if catalog.targets is not None:
        catalog, unseen = drop_unseen_labels(catalog)
        notes += unseen
    return catalog, root, notes


def build_data(cfg: Config, *, split_file: Path | None = None, progress: bool = True,
               builder: bool = True) -> DataBundle:
    """Load ``cfg.data``; ``split_file`` (a run's split.csv) fixes the rows and splits on resume.
    ``builder``: False for torchrun's other processes on a machine, which wait for its decoded cache."""
    catalog, root, notes = plan_data(cfg, split_file=split_file)
    if cfg.data.roi_crop and catalog.boxes is None:
        raise UserError(f"data.roi_crop=true but {root} has no annotated regions (GTSRB's GT csv files have them)")
    if catalog.arrays is not None:
        bundle = _from_arrays(catalog, cfg.data, root, cfg)
    else:
        bundle = _from_files(catalog, cfg.data, root, progress, cfg, builder)
    bundle.catalog, bundle.notes = catalog, notes + bundle.notes
    bundle.skipped = list(catalog.skipped) + bundle.skipped  # files the reader could not use come first
    return bundle


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
    if mode == "mean_image":  # a (C, H, W) mean, pixel by pixel, and no std (data.augment.normalize)
        return mean_image(train_images), [1.0] * channels
    mean, std = mean_std(train_images)
    return (mean, [1.0] * channels) if mode == "mean" else (mean, std)


def _from_arrays(catalog: Catalog, d: DataConfig, root: Path, cfg: Config) -> DataBundle:
    native = catalog.arrays.shape[1]
    channels = d.channels or native
    size = d.image_size or catalog.arrays.shape[-1]
    splits = {}
    for name in catalog.present_splits():
        rows = catalog.rows(name)
        images = torch.from_numpy(np.ascontiguousarray(catalog.arrays[rows]))
        x = resize_tensor(set_channels(images, channels), size)
        splits[name] = Split(labels=split_labels(catalog, rows), images=x)
    mean, std = _normalisation(d, cfg, splits["train"].images, channels)
    return DataBundle(catalog.classes, splits, channels, size, mean, std, str(root), True)


def _from_files(catalog: Catalog, d: DataConfig, root: Path, progress: bool, cfg: Config,
                builder: bool = True) -> DataBundle:
    n = len(catalog)
    size = d.image_size
    estimate = n * (d.channels or 3) * max(size, 64) ** 2  # bytes; 64 px when size is 'native'
    files = {}
    for name in catalog.present_splits():
        rows = catalog.rows(name)
        boxes = catalog.boxes[rows] if d.roi_crop else None
        files[name] = ([catalog.paths[i] for i in rows], split_labels(catalog, rows), boxes)
    notes = []
    mode = _cache_mode(d, estimate, notes)
    if mode == "disk" and not size:
        raise UserError("data.cache=disk needs one image size: set data.image_size=N")
    native = (_native_square(files.get("train", ([], [], None)))
              if mode == "memory" and not size and not d.roi_crop else 0)
    if mode in ("memory", "disk") and (size or native):
        from resnetlab.data.decoded_cache import CacheUnavailable

        try:
            bundle = _from_decoded_cache(files, catalog, d, root, progress and builder, cfg, notes, builder, mode,
                                         native)
            bundle.notes = notes
            return bundle
        except CacheUnavailable as e:
            if d.cache == "disk":
                raise
            # memory: decode into memory as before; disk (too big for memory): stream
            mode = "stream" if mode == "disk" else "memory"
            notes.append(f"{e}; {'streaming' if mode == 'stream' else 'decoding into memory'} instead")
    if mode == "stream":
        if size == 0:
            raise UserError("streaming needs a fixed size: set data.image_size=N")
        splits = {k: Split(labels=labels, paths=paths, boxes=boxes)
                  for k, (paths, labels, boxes) in files.items()}
        sample, greys = _sample(splits["train"], size, d)
        # as the cache decides: one channel when every image is grey (judged on the sample here)
        channels = _channels(d, greys)
        if sample is not None:
            sample = set_channels(sample, channels)
        mean, std = _normalisation(d, cfg, sample, channels)
        return DataBundle(catalog.classes, splits, channels, size, mean, std, str(root), False, notes=notes)

    splits, skipped, greys = {}, [], []
    decoded = {}
    for name, (paths, labels, boxes) in files.items():
        arrays, split_greys, kept, bad = decode_files(paths, size=size, resize=d.resize, on_bad_image=d.on_bad_image,
                                                      progress=progress, boxes=boxes, margin=d.roi_margin)
        skipped += bad
        greys += split_greys
        decoded[name] = (stack_arrays(arrays, paths, kept), paths, labels, kept)
    sizes = {tuple(x.shape[-2:]) for x, *_ in decoded.values() if len(x)}
    if len(sizes) > 1:
        raise UserError(f"splits have different image sizes {sorted(sizes)}; set data.image_size=N")
    channels = _channels(d, greys)
    for name, (x, paths, labels, kept) in decoded.items():
        splits[name] = Split(
            labels=labels[torch.as_tensor(kept, dtype=torch.long)],
            images=set_channels(x, channels) if len(x) else x[:, :channels],
            paths=[paths[i] for i in kept],
        )
    _require_train(splits, root, skipped)
    image_size = splits["train"].images.shape[-1]
    mean, std = _normalisation(d, cfg, splits["train"].images, channels)
    return DataBundle(catalog.classes, splits, channels, image_size, mean, std, str(root), True, skipped, notes=notes)


def split_labels(catalog: Catalog, rows: np.ndarray) -> torch.Tensor:
    """(n,) int64 classes of ``rows``; multi-label: (n, K) float32 multi-hot, the loss's targets."""
    if catalog.targets is not None:
        return torch.from_numpy(catalog.targets[rows]).float()
    return torch.from_numpy(catalog.labels[rows]).long()


def _require_train(splits: dict[str, Split], root: Path, skipped: list) -> None:
    if len(splits["train"]) == 0:
        raise UserError(f"no readable training images in {root} ({len(skipped)} skipped as bad)")


def _channels(d: DataConfig, greys: list[bool]) -> int:
    """data.channels, else 1 when every decoded image is grey, else 3 (each path decides alike)."""
    return d.channels or (1 if greys and all(greys) else 3)


def available_memory() -> int | None:
    """Bytes of memory new allocations can have without swapping (Linux's MemAvailable); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cache_mode(d: DataConfig, estimate: int, notes: list[str]) -> str:
    """memory, disk or stream; 'auto' picks memory when the decoded images fit data.cache_max_gb and
    half the available memory (the rest is for the model, its activations and the workers), else
    disk when the cache folder has room for them (and a margin), else stream, and says why."""
    if d.cache != "auto":
        return d.cache
    gib, ram = estimate / 2**30, available_memory()
    if estimate <= d.cache_max_gb * 2**30:
        if ram is None or estimate <= ram / 2:
            return "memory"
        over = (f"fits data.cache_max_gb={d.cache_max_gb:g} but is over half the {ram / 2**30:.1f} GiB "
                "of memory available")
    else:
        over = f"is over data.cache_max_gb={d.cache_max_gb:g}"
    from resnetlab.data.decoded_cache import default_cache_dir

    folder = Path(d.cache_dir) if d.cache_dir else default_cache_dir()
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if d.image_size and free > 1.25 * estimate:
        notes.append(f"{gib:.1f} GiB of decoded images {over}: caching them on disk in {folder} "
                     "(data.cache=disk; data.cache=stream decodes every epoch instead)")
        return "disk"
    why = "data.image_size is not set" if not d.image_size else f"only {free / 2**30:.1f} GiB free in {probe}"
    notes.append(f"{gib:.1f} GiB of decoded images {over} and {why}: streaming (decoding every epoch)")
    return "stream"


def _native_square(train_files) -> int:
    """With data.image_size unset: the first training image's side when it is square (CIFAR's 32),
    so the decoded cache can hold the set at its own size; 0 otherwise (decoded in memory as it is)."""
    from resnetlab.data.images import BadImage, load_array

    paths, _, _ = train_files
    try:
        arr, _ = load_array(paths[0], 0, "squash")
    except (BadImage, IndexError):
        return 0
    return arr.shape[0] if arr.shape[0] == arr.shape[1] else 0


def _from_decoded_cache(files, catalog: Catalog, d: DataConfig, root: Path, progress: bool, cfg: Config,
                        notes: list[str], builder: bool, mode: str, native: int) -> DataBundle:
    """Splits read from the decoded cache (data/decoded_cache.py), which decodes only the files it lacks:
    into memory in one pass per split (mode memory), or a batch at a time from disk (mode disk).
    ``native``: data.image_size is unset and every image must have this side."""
    from resnetlab.data.decoded_cache import DiskImages, cached_images

    size = d.image_size or native
    paths = [p for split_paths, _, _ in files.values() for p in split_paths]
    boxes = np.concatenate([b for _, _, b in files.values()]) if d.roi_crop else None
    cached = cached_images(paths, boxes, root=str(root), cache_dir=d.cache_dir, size=size, resize=d.resize,
                           margin=d.roi_margin, on_bad_image=d.on_bad_image, progress=progress, notes=notes,
                           builder=builder, native=not d.image_size)
    channels = _channels(d, cached.grey)
    splits, start = {}, 0
    for name, (split_paths, labels, _) in files.items():
        rows = cached.rows[start:start + len(split_paths)]
        start += len(split_paths)
        kept = np.flatnonzero(rows >= 0)
        images = DiskImages(cached.data, rows[kept], size, channels)
        splits[name] = Split(labels=labels[torch.from_numpy(kept)],
                             images=images.load() if mode == "memory" else images,
                             paths=[split_paths[i] for i in kept])
    _require_train(splits, root, cached.skipped)
    mean, std = _normalisation(d, cfg, splits["train"].images, channels)
    return DataBundle(catalog.classes, splits, channels, size, mean, std, str(root), mode == "memory",
                      cached.skipped)


def _sample(split: Split, size: int, d: DataConfig) -> tuple[torch.Tensor | None, list[bool]]:
    """A fixed sample of up to 1,000 training images of a streamed set (for mean/std and the
    channel count), and whether each is grey."""
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(split.paths))[:1000]
    boxes = None if split.boxes is None else split.boxes[pick]
    paths = [split.paths[i] for i in pick]
    arrays, greys, kept, _ = decode_files(paths, size=size, resize=d.resize, on_bad_image="skip",
                                          progress=False, boxes=boxes, margin=d.roi_margin)
    return (stack_arrays(arrays, paths, kept) if arrays else None), greys
