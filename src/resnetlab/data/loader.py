"""Batches for one epoch, from the uint8 cache or streamed from files.

Both loaders are pure functions of (seed, epoch, step): the order of an epoch is
a permutation drawn from (seed, epoch), each batch's augmentation from
(seed, epoch, step). So a run resumed at any step sees exactly the batches an
uninterrupted run would have seen, whatever the number of workers.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from resnetlab.data.augment import BatchAugment, make_generator
from resnetlab.data.decode import resize_tensor, set_channels
from resnetlab.data.images import BadImage, load_array
from resnetlab.device import to_device
from resnetlab.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 (N, C, H, W), int64 (N,) or soft (N, k) float, on the device


def shard(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's contiguous part of a global batch; sizes differ by at most one image."""
    return batch.tensor_split(world)[rank] if world > 1 else batch


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The images of an epoch, in order. With ``weights`` (the class-balanced sampler) n draws with
    replacement, each image with probability proportional to its weight."""
    if not shuffle:
        return torch.arange(n)
    if weights is not None:
        return torch.multinomial(weights.double().cpu(), n, replacement=True, generator=make_generator(seed, epoch))
    return torch.randperm(n, generator=make_generator(seed, epoch))


TAILS = ("keep", "merge", "drop")  # what becomes of an epoch's last images that do not fill a batch


def batch_slices(n: int, batch_size: int, tail: str = "keep") -> list[slice]:
    """Batches of an epoch. ``tail`` says what becomes of a short last batch: keep it (evaluation); merge
    it into the one before (training: every image once an epoch, and no step sees a tiny batch, as
    BatchNorm needs 2+); or drop it (train.drop_last: every step one shape, for cuDNN and torch.compile;
    a shuffled order drops other images each epoch). A split smaller than one batch is one batch."""
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r} is not one of {TAILS}")
    starts = list(range(0, n, batch_size))
    if tail != "keep" and len(starts) > 1 and n - starts[-1] < batch_size:
        starts.pop()
    ends = starts[1:] + [n if tail != "drop" or len(starts) == 1 else starts[-1] + batch_size]
    return [slice(a, b) for a, b in zip(starts, ends)]


def group_parts(groups: torch.Tensor, *, seed: int, epoch: int, world: int) -> list[torch.Tensor]:
    """Each rank's images for an epoch when ranks read disjoint groups (a WebDataset's shards): the
    groups shuffled by (seed, epoch), each given to the rank holding the fewest images so far, then
    each rank's images shuffled. Every image once an epoch; ranks differ by at most one group's size."""
    order = torch.argsort(groups, stable=True)
    ids, counts = torch.unique(groups, return_counts=True)
    if len(ids) < world:
        raise UserError(f"the training images are in {len(ids)} shards but {world} processes read them, each "
                        "from shards of its own: write smaller shards (resnetlab data shards --shard-size)")
    members = order.split(counts.tolist())
    parts, loads = [[] for _ in range(world)], [0] * world
    for k in torch.randperm(len(ids), generator=make_generator(seed, epoch)).tolist():
        r = loads.index(min(loads))
        parts[r].append(members[k])
        loads[r] += len(members[k])
    out = []
    for r, chosen in enumerate(parts):
        idx = torch.cat(chosen)
        out.append(idx[torch.randperm(len(idx), generator=make_generator(seed, epoch, r))])
    return out


class _Batches:
    """The batch plan both loaders share: global slices of an epoch's order, and this rank's share."""

    def __init__(self, n: int, batch_size: int, tail: str, rank: int = 0, world: int = 1, limit: int = 0):
        slices = batch_slices(n, batch_size, tail)
        self.tail = tail
        self.slices, self.full_steps = slices[: limit or None], len(slices)  # full_steps: before any limit
        self.rank, self.world = rank, world  # torchrun's RANK and WORLD_SIZE: each process takes its share

    def __len__(self) -> int:
        return len(self.slices)

    def limit(self, steps: int) -> None:
        """Only the first ``steps`` batches of each epoch's order (a time budget's plan)."""
        self.slices = self.slices[:steps]

    def global_batch(self, step: int) -> int:
        """Images in step ``step`` summed over all ranks."""
        return self.slices[step].stop - self.slices[step].start


class CachedLoader(_Batches):
    """Batches from a uint8 tensor kept on the training device; augmentation done per batch there."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        device: torch.device,
        seed: int,
        shuffle: bool = False,
        augment: BatchAugment | None = None,
        tail: str = "keep",
        rank: int = 0,
        world: int = 1,
        sample_weights: torch.Tensor | None = None,
        limit: int = 0,
    ):
        super().__init__(len(labels), batch_size, tail, rank, world, limit)
        self.images = images.to(device)  # a DiskImages stays on disk and is read a batch at a time
        self.labels = labels.to(device)
        self.seed, self.shuffle, self.augment = seed, shuffle, augment
        self.sample_weights = sample_weights

    def epoch(self, epoch: int, start: int = 0, size: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from step ``start``; ``size`` > 0 resizes them (progressive resizing)."""
        order = epoch_order(len(self.labels), seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                            weights=self.sample_weights)
        device = self.labels.device
        on_device = order.to(device)  # once an epoch: a step's indices are a slice of it, no copy a step
        # a DiskImages reads records by host indices: device ones would be copied back (a sync a step)
        host = None if isinstance(self.images, torch.Tensor) else order.numpy()
        for step in range(start, len(self.slices)):
            part = self.slices[step]
            idx = on_device[part]
            x = self.images[idx] if host is None else to_device(self.images[host[part]], device)
            y = self.labels[idx]
            if self.augment is not None:
                # drawn for the whole global batch, then sharded: any rank count sees the same images;
                # drawn on the CPU, copied without a sync (data/augment.py)
                x, y = self.augment(x, y, make_generator(self.seed, epoch, step), index=order[part], epoch=epoch)
            yield shard(resize_tensor(x, size), self.rank, self.world), shard(y, self.rank, self.world)


class FileDataset(Dataset):
    """Decodes one file per item in a DataLoader worker: a uint8 (C, S, S) image, its label (a tensor
    row of ``labels``: (N,) classes or (N, K) multi-hot), its index, and why it could not be decoded
    ("" when it could). Augmentation is not done here but on
    the whole decoded batch, by the cached path's BatchAugment (StreamLoader)."""

    def __init__(self, paths, labels, *, size, resize, channels, boxes=None, margin: float = 0.1):
        self.paths, self.labels = paths, labels
        self.boxes, self.margin = boxes, margin
        self.size, self.resize, self.channels = size, resize, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            box = None if self.boxes is None else self.boxes[index]
            arr, _ = load_array(self.paths[index], self.size, self.resize, box, self.margin)
        except BadImage as e:
            # reported in the main process, which knows on_bad_image and the run folder
            blank = torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8)
            return blank, self.labels[index], index, str(e)
        x = set_channels(torch.from_numpy(arr).permute(2, 0, 1)[None], self.channels)[0]
        return x, self.labels[index], index, ""


class _EpochPlan:
    """The batch sampler of a StreamLoader's one DataLoader: set to each epoch's batches before
    iterating, so the workers (persistent) outlive the epoch instead of starting again."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamLoader(_Batches):
    """Batches decoded by DataLoader workers, for data sets too large for the cache.

    Each decoded batch is augmented by ``augment``, the BatchAugment the cached path uses, drawn
    from the same (seed, epoch, step): one process streaming trains exactly as from the cache.
    A step whose images are all bad yields an empty batch rather than none, so step numbers stay
    those of the batch plan: the schedule and a resume see the same steps as the cached path.
    With ``groups`` (each image's shard) and several ranks, training ranks read disjoint shards
    (``group_parts``) instead of a share of every global batch."""

    def __init__(self, dataset: FileDataset, *, batch_size, device, seed, num_workers, on_bad_image,
                 shuffle=False, tail: str = "keep", rank: int = 0, world: int = 1, sample_weights=None,
                 limit: int = 0, augment: BatchAugment | None = None, groups: torch.Tensor | None = None):
        super().__init__(len(dataset), batch_size, tail, rank, world, limit)
        # a balanced sampler draws from every shard; evaluation keeps the global order
        self.groups = groups if groups is not None and world > 1 and shuffle and sample_weights is None else None
        self.sizes: list[int] = []  # global images per step when ranks read their own shards
        self.dataset, self.device, self.seed = dataset, device, seed
        self.sample_weights, self.augment = sample_weights, augment
        self.shuffle, self.num_workers, self.on_bad_image = shuffle, num_workers, on_bad_image
        self.skipped: dict[str, str] = {}
        self.plan, self.loader = _EpochPlan(), None

    def global_batch(self, step: int) -> int:
        return self.sizes[step] if self.sizes else super().global_batch(step)

    def epoch(self, epoch: int, start: int = 0, size: int = 0) -> Iterator[Batch]:
        if self.groups is not None:
            batches = self._own_shards(epoch)[start:]
        else:
            order = epoch_order(len(self.dataset), seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                                weights=self.sample_weights)
            batches = [shard(order[s], self.rank, self.world) for s in self.slices[start:]]
        batches = [b.tolist() for b in batches]
        self.plan.batches = [b for b in batches if b]  # an eval batch smaller than the rank count
        if self.loader is None:  # training workers persist across epochs; evaluation's exit after each pass
            self.loader = DataLoader(self.dataset, batch_sampler=self.plan, num_workers=self.num_workers,
                                     pin_memory=self.device.type == "cuda",
                                     persistent_workers=self.shuffle and self.num_workers > 0)
        for step, (x, y, index, err) in enumerate(self.loader, start=start):
            if any(err):  # the workers' messages, host strings: no tensor is read
                good = [i for i, e in enumerate(err) if not e]
                for i, e in enumerate(err):
                    if e:
                        path = self.dataset.paths[int(index[i])]
                        if self.on_bad_image == "fail":
                            raise UserError(f"bad image {path}: {e} (set data.on_bad_image=skip to leave it out)")
                        self.skipped[path] = e
                keep = torch.tensor(good, dtype=torch.long)
                x, y, index = x[keep], y[keep], index[keep]  # may leave none: the step is then empty, not skipped
            x, y = to_device(x, self.device), to_device(y, self.device)  # pinned by the DataLoader on CUDA
            if self.augment is not None and len(y):
                # a rank holds only its own images: its own draws (one process: the cached path's)
                key = (self.seed, epoch, step) if self.world == 1 else (self.seed, epoch, step, self.rank)
                x, y = self.augment(x, y, make_generator(*key), index=index, epoch=epoch)
            yield resize_tensor(x, size), y

    def _own_shards(self, epoch: int) -> list[torch.Tensor]:
        """This rank's batches, from its own shards: as many steps as the global plan, so every rank
        steps together; a step's global batch is the sum of the ranks' (they differ by a few images)."""
        parts = [p.tensor_split(self.full_steps) for p in
                 group_parts(self.groups, seed=self.seed, epoch=epoch, world=self.world)]
        if min(len(p[-1]) for p in parts) == 0:
            raise UserError(f"a process's shards hold fewer images than the {self.full_steps} steps of an epoch: "
                            "write smaller shards (resnetlab data shards --shard-size) or start fewer processes")
        steps = range(len(self.slices))
        self.sizes = [sum(len(p[s]) for p in parts) for s in steps]
        return [parts[self.rank][s] for s in steps]
