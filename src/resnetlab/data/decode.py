"""Decode once into a uint8 tensor cache: (N, C, S, S), the form batch augmentation wants.

Decoding is the slow part of small-image training (a 32 px JPEG takes longer to
decode than a ResNet-18 step spends on it on a GPU), so it is done once, in
threads: Pillow releases the GIL while it decodes.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from resnetlab.data.images import BadImage, load_array
from resnetlab.errors import UserError

# ITU-R BT.601 luma, what Pillow's convert("L") uses
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def decode_files(
    paths: list[str], *, size: int, resize: str, on_bad_image: str, progress: bool = True,
    boxes=None, margin: float = 0.1, workers: int = 0,
) -> tuple[list[np.ndarray], list[bool], list[int], list[tuple[str, str]]]:
    """Decode every file (cropped to ``boxes[i]`` if given) in ``workers`` threads (0: up to 8);
    returns arrays, grey flags, kept indices into ``paths``, and skipped files."""

    def one(i: int):
        try:
            return i, *load_array(paths[i], size, resize, None if boxes is None else boxes[i], margin), None
        except BadImage as e:
            return i, None, False, str(e)

    arrays, greys, kept, skipped = [], [], [], []
    workers = workers or min(8, usable_cpus())
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(one, range(len(paths)), chunksize=64) if workers > 1 else map(one, range(len(paths)))
        if progress and len(paths) > 2000:
            from rich.progress import track

            results = track(results, total=len(paths), description="decoding images", transient=True)
        for i, arr, grey, err in results:
            if err is not None:
                if on_bad_image == "fail":
                    raise UserError(f"bad image {paths[i]}: {err} (set data.on_bad_image=skip to leave it out)")
                skipped.append((paths[i], err))
                continue
            arrays.append(arr)
            greys.append(grey)
            kept.append(i)
    return arrays, greys, kept, skipped


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


DECODE = 256  # images a decoding task: 0.8 MB of pixels at 32 px, 38 MB at 224 px
PROCESSES_FROM = 2000  # images: below this, starting processes costs more than threads lose to the GIL


def decode_batches(paths: list[str], *, size: int, resize: str, margin: float, boxes=None, on_bad_image: str = "skip"):
    """Decode ``paths`` DECODE at a time, in order; yields (offset, arrays, greys, kept, skipped) a
    batch, ``kept`` counted from ``offset``. Many files are decoded in processes: Pillow holds the
    GIL for everything but its C decoder, so at CIFAR sizes threads mostly wait for each other.
    At most 2 batches a process are in flight, so memory stays a few batches whatever the data."""
    starts = range(0, len(paths), DECODE)
    tasks = ((paths[a:a + DECODE], None if boxes is None else boxes[a:a + DECODE]) for a in starts)
    workers = usable_cpus()
    if workers < 2 or len(paths) < PROCESSES_FROM:
        for a, (part, part_boxes) in zip(starts, tasks):
            yield a, *decode_files(part, size=size, resize=resize, on_bad_image=on_bad_image, progress=False,
                                   boxes=part_boxes, margin=margin)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # fork: the workers run only Pillow and numpy, as DataLoader's forked workers do
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pending: deque = deque()
        for a, (part, part_boxes) in zip(starts, tasks):
            pending.append((a, pool.submit(_decode_task, part, part_boxes, size, resize, margin, on_bad_image)))
            if len(pending) >= 2 * workers:
                a0, done = pending.popleft()
                yield a0, *done.result()
        while pending:
            a0, done = pending.popleft()
            yield a0, *done.result()


def _decode_task(paths, boxes, size, resize, margin, on_bad_image):
    return decode_files(paths, size=size, resize=resize, on_bad_image=on_bad_image, progress=False, boxes=boxes,
                        margin=margin, workers=1)


def progress_bar(enabled: bool, total: int, description: str, *, done: int = 0):
    """A callable advancing a rich progress bar by n (1 by default), stopped when it reaches
    ``total``; a no-op when not ``enabled``."""
    if not enabled:
        return lambda n=1: None
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(description, total=total, completed=done)
    bar.start()

    def advance(n: int = 1) -> None:
        bar.advance(task, n)
        if bar.tasks[0].completed >= total:
            bar.stop()

    return advance


def stack_arrays(arrays: list[np.ndarray], paths: list[str], kept: list[int]) -> torch.Tensor:
    """(H, W, 3) arrays of one size -> (N, 3, H, W) uint8; differing sizes need data.image_size."""
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        by_size = {}
        for a, i in zip(arrays, kept):
            by_size.setdefault(a.shape[:2], paths[i])
        (s1, p1), (s2, p2) = list(by_size.items())[:2]
        raise UserError(
            f"images differ in size ({s1[1]}x{s1[0]} {p1}, {s2[1]}x{s2[0]} {p2}); "
            "set data.image_size=N to resize them to N x N"
        )
    if not arrays:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def set_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    grey = (images.float() * _LUMA).sum(1, keepdim=True)
    return grey.round_().clamp_(0, 255).to(torch.uint8)


def resize_tensor(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, C, size, size), antialiased bilinear, in chunks of images to bound
    memory: a decoded cache at load time, and a batch under progressive resizing (one chunk)."""
    if size <= 0 or images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for part in images.split(chunk):
        x = F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def mean_std(images: torch.Tensor, elements: int = 2**22) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a uint8 cache (or a DiskImages), in [0, 1] units, from each channel's
    count of every pixel value: exact, in one integer pass (0.04 s for Fashion-MNIST's 43M pixels on a
    2-core CPU), ``elements`` values at a time so a DiskImages is read in parts."""
    c = images.shape[1]
    chunk = max(1, elements // max(1, c * images.shape[2] * images.shape[3]))
    counts = torch.zeros(c, 256, dtype=torch.int64)
    for part in images.split(chunk):
        for ch in range(c):
            counts[ch] += torch.bincount(part[:, ch].reshape(-1), minlength=256)
    value = torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(1).clamp_min(1).double()
    mean = (counts * value).sum(1) / n
    std = ((counts * value * value).sum(1) / n - mean * mean).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def mean_image(images: torch.Tensor, elements: int = 2**22) -> list:
    """The mean image (C, H, W) of a uint8 cache (or a DiskImages), in [0, 1] units, as nested lists;
    float64 sums of ``elements`` values at a time."""
    c, h, w = images.shape[1:]
    total = torch.zeros(c, h, w, dtype=torch.float64)
    for part in images.split(max(1, elements // max(1, c * h * w))):
        total += part.to(torch.float64).sum(0) / 255
    return (total / max(images.shape[0], 1)).round(decimals=6).tolist()


def decode_for_model(paths: list[str], size: int, resize: str, channels: int):
    """Files -> uint8 (N, C, size, size) as a model trained at ``size`` px expects, their paths, and
    (path, reason) for the files that cannot be used."""
    decoded, _, indices, bad = decode_files(paths, size=size, resize=resize, on_bad_image="skip", progress=False)
    arrays, kept = [], []
    for arr, i in zip(decoded, indices):
        if arr.shape[0] != size or arr.shape[1] != size:
            bad.append((paths[i], f"{arr.shape[1]}x{arr.shape[0]} px but the model takes {size} px"))
            continue
        arrays.append(torch.from_numpy(arr).permute(2, 0, 1))
        kept.append(paths[i])
    if not arrays:
        return torch.empty(0, channels, size, size, dtype=torch.uint8), kept, bad
    return set_channels(torch.stack(arrays), channels), kept, bad


class FileImages:
    """Image files decoded when read, a chunk at a time: what evaluation uses of a uint8 (N, C, S, S)
    tensor (len, shape, ``[rows]``, ``split``), for a streamed split too large to hold decoded.
    Built by ``readable``, so every file in it is known to decode."""

    def __init__(self, paths: list[str], *, size: int, resize: str, channels: int):
        self.paths, self.size, self.resize, self.channels = paths, size, resize, channels
        self.shape = (len(paths), channels, size, size)

    @classmethod
    def readable(cls, paths: list[str], *, size: int, resize: str, channels: int,
                 chunk: int = 1024) -> tuple["FileImages", list[int], list[tuple[str, str]]]:
        """The files of ``paths`` that decode (found by decoding each chunk once; pixels dropped), their
        indices in ``paths``, and (path, reason) for the rest."""
        where = {p: i for i, p in enumerate(paths)}
        kept, bad = [], []
        for start in range(0, len(paths), chunk):
            _, ok, failed = decode_for_model(paths[start:start + chunk], size, resize, channels)
            kept += [where[p] for p in ok]
            bad += failed
        return cls([paths[i] for i in kept], size=size, resize=resize, channels=channels), kept, bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> torch.Tensor:
        rows = (range(len(self.paths))[index] if isinstance(index, slice)
                else torch.as_tensor(index).reshape(-1).tolist())
        paths = [self.paths[i] for i in rows]
        images, kept, bad = decode_for_model(paths, self.size, self.resize, self.channels)
        if bad:
            raise UserError(f"{bad[0][0]} no longer decodes ({bad[0][1]}): it changed during evaluation; run it again")
        return images

    def split(self, chunk: int):
        """Consecutive chunks, like Tensor.split, decoded one at a time."""
        for start in range(0, len(self.paths), chunk):
            yield self[slice(start, start + chunk)]

    def to(self, device) -> "FileImages":
        return self
