"""The decoded cache: every image decoded once at a training size, kept on disk, reused by every run.

One folder per data set root and preprocessing, ``<cache_dir>/<key>``, key = SHA-256 of the format
version, the root, the image size, the resize rule and (when cropping to annotated regions) the
ROI margin. Inside:

- ``images.u8``: records of 3 x S x S uint8 bytes (the memory cache's (C, S, S) layout, always 3
  channels as decoded), appended in the order files were first decoded;
- ``index.json``: for each source file its record, size, mtime and crop box, and whether it is
  grey; the files that could not be decoded, with why.

A record is found by its file (path, size, mtime, box), never by split, seed or label: a run with
another seed, val_count or class selection, ``evaluate`` and every tuning trial read the same
records, and only files that are new or changed since are decoded (appended; a changed file's
old record stays as dead bytes until the folder is deleted). Memory mode reads a split's records
in one pass; ``data.cache=disk`` reads them a batch at a time with ``os.pread`` into a fresh
buffer, so resident memory stays a few batches whatever the file's size (a numpy memmap would
count every page it touches as resident).

Safety: one process builds at a time (an exclusive ``flock`` on ``lock``; a second run waits for
it, then finds the records there). ``index.json`` is rewritten atomically every SAVE_EVERY_S of
building and at the end, after the records it names are flushed to disk, and readers trust only
what it names: bytes past it (a build killed mid-way, a disk that filled) are never read, and the
next builder cuts them off and goes on from there. A data file shorter than its index says is
rebuilt, with one line saying why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from resnetlab.data.archive import source_stat
from resnetlab.data.decode import DECODE, decode_batches, progress_bar, set_channels
from resnetlab.errors import UserError
from resnetlab.io import atomic_write_text, write_failed

FORMAT = 2
SAVE_EVERY_S = 2.0  # s between index saves while building: what an interrupted build loses at most
DATA, INDEX, LOCK = "images.u8", "index.json", "lock"


class CacheUnavailable(UserError):
    """The cache folder cannot be written (read-only, full): a run that did not ask for the disk cache
    goes on without it."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resnetlab"


class DiskImages:
    """A split's records on disk: ``[index]`` reads those images as a uint8 (B, C, S, S) tensor."""

    def __init__(self, path: Path, rows: np.ndarray, size: int, channels: int):
        self.path, self.rows, self.size, self.channels = path, np.asarray(rows, dtype=np.int64), size, channels
        self.n = len(self.rows)
        self.record = 3 * size * size  # bytes
        self.shape = (self.n, channels, size, size)
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):  # DataLoader workers and deepcopy get a closed handle; each reopens its own
        return {**self.__dict__, "_fd": None}

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            pick = np.arange(self.n)[index]
        else:  # the training loader's are numpy already: a tensor on a GPU would be copied back, a sync
            pick = index if isinstance(index, np.ndarray) else np.asarray(torch.as_tensor(index).cpu())
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        rows = self.rows[pick.reshape(-1)]
        out = np.empty((len(rows), self.record), dtype=np.uint8)
        for j, r in enumerate(rows.tolist()):
            if os.preadv(self._fd, [memoryview(out[j])], r * self.record) != self.record:
                raise UserError(f"the decoded cache {self.path} ends early (record {r}): delete it and run again")
        return set_channels(torch.from_numpy(out).view(len(rows), 3, self.size, self.size), self.channels)

    def load(self) -> torch.Tensor:
        """Every record of the split in memory, read in one pass (memory mode)."""
        if self.n == 0:
            return torch.empty(0, self.channels, self.size, self.size, dtype=torch.uint8)
        records = os.path.getsize(self.path) // self.record
        if int(self.rows.max()) >= records:
            raise UserError(f"the decoded cache {self.path} ends early: delete it and run again")
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(records, self.record))
        out = torch.from_numpy(np.take(mapped, self.rows, axis=0)).view(self.n, 3, self.size, self.size)
        del mapped
        return set_channels(out, self.channels)

    def split(self, chunk: int):
        """Consecutive chunks, like Tensor.split, read one at a time."""
        for start in range(0, self.n, chunk):
            yield self[slice(start, min(start + chunk, self.n))]

    def to(self, device) -> "DiskImages":
        return self  # stays on disk; loaders move each batch


@dataclass
class Cached:
    """Where each requested file's image is: ``rows[i]`` its record, -1 when it could not be decoded."""

    data: Path
    rows: np.ndarray  # (N,) int64
    grey: list[bool]  # of the files with a record, in request order
    skipped: list[tuple[str, str]]  # (path, why) of the others


def store_folder(base: Path, *, root: str, size: int, resize: str, margin: float | None) -> Path:
    """One folder per data set root and preprocessing; margin is None when images are not cropped."""
    crop = "full" if margin is None else f"roi{margin}"
    return base / hashlib.sha256(f"{FORMAT}|{root}|{size}|{resize}|{crop}".encode()).hexdigest()[:24]


def _signature(path: str, box) -> list:
    """What makes a record current: the file's size and mtime, and the box it is cropped to."""
    try:
        nbytes, mtime_ns = source_stat(path)
    except OSError:
        nbytes, mtime_ns = -1, -1  # decoding says what is wrong with it
    return [nbytes, mtime_ns, "" if box is None else ",".join(str(int(v)) for v in box)]


def cached_images(paths: list[str], boxes, *, root: str, cache_dir: str, size: int, resize: str, margin: float,
                  on_bad_image: str, progress: bool, notes: list[str], builder: bool = True,
                  native: bool = False) -> Cached:
    """The records of ``paths`` (cropped to ``boxes[i]`` when given), decoding what the cache lacks.
    ``native``: keep each image's own size, which must be ``size`` (data.image_size unset).
    ``notes`` gets one line on what was reused and decoded. Under torchrun only a machine's first
    process is the ``builder``: the others wait until the index names every file."""
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = store_folder(base, root=root, size=size, resize="native" if native else resize,
                          margin=None if boxes is None else margin)
    want = [_signature(p, None if boxes is None else boxes[i]) for i, p in enumerate(paths)]
    if not builder:
        _check_writable(base)  # where the builder cannot write it goes on without the cache: so must this one
        index = _wait_for(folder, paths, want)
        notes.append(f"decoded cache: reading {folder} (built by local rank 0)")
    else:
        _check_writable(base)
        try:
            folder.mkdir(exist_ok=True)
            lock = _locked(folder / LOCK)
        except OSError as e:
            raise CacheUnavailable(f"{write_failed(folder / LOCK, e)}; set data.cache_dir elsewhere") from None
        with lock:
            index = _read_index(folder, size, notes)
            todo = [i for i, p in enumerate(paths) if _entry(index, p, want[i]) is None]
            reused = len(paths) - len(todo)
            if todo:
                _decode_into(folder, index, [paths[i] for i in todo], [want[i] for i in todo],
                             None if boxes is None else boxes[todo], size=size, resize=resize, margin=margin,
                             on_bad_image=on_bad_image, progress=progress, native=native)
        notes.append(f"decoded cache: {reused:,} images read from {folder}"
                     + (f", {len(todo):,} decoded into it" if todo else ""))
    return _resolve(index, folder, paths, want, on_bad_image)


def _entry(index: dict, path: str, signature: list):
    """The file's index entry when it is current: ['rec', row, grey] or ['bad', why]; else None."""
    found = index["files"].get(path)
    return found[1:] if found is not None and found[0] == signature else None


def _resolve(index: dict, folder: Path, paths: list[str], want: list, on_bad_image: str) -> Cached:
    rows, grey, skipped = np.full(len(paths), -1, dtype=np.int64), [], []
    for i, p in enumerate(paths):
        kind, *rest = _entry(index, p, want[i])
        if kind == "rec":
            rows[i] = rest[0]
            grey.append(bool(rest[1]))
        elif on_bad_image == "fail":
            raise UserError(f"bad image {p}: {rest[0]} (set data.on_bad_image=skip to leave it out)")
        else:
            skipped.append((p, rest[0]))
    return Cached(folder / DATA, rows, grey, skipped)


def _decode_into(folder: Path, index: dict, paths: list[str], want: list, boxes, *, size: int, resize: str,
                 margin: float, on_bad_image: str, progress: bool, native: bool) -> None:
    """Append the records of ``paths``. The index is saved once the records it names are flushed, at
    most every SAVE_EVERY_S (each save rewrites the whole index: ~0.1 s for 50,000 files) and at the end."""
    record, data = 3 * size * size, folder / DATA
    bar = progress_bar(progress and len(paths) > 1000, len(paths), "decoding images into the cache")
    saved = time.monotonic()
    try:
        with open(data, "ab") as out:
            out.truncate(index["records"] * record)  # bytes past the index: a build that never finished
            batches = decode_batches(paths, size=0 if native else size, resize=resize, margin=margin, boxes=boxes,
                                     on_bad_image=on_bad_image)
            for offset, arrays, greys, kept, bad in batches:
                for arr, grey, k in zip(arrays, greys, kept):
                    if arr.shape != (size, size, 3):
                        raise UserError(f"images differ in size ({size}x{size} and {arr.shape[1]}x{arr.shape[0]} "
                                        f"{paths[offset + k]}); set data.image_size=N to resize them to N x N")
                    out.write(np.ascontiguousarray(arr.transpose(2, 0, 1)).tobytes())
                    index["files"][paths[offset + k]] = [want[offset + k], "rec", index["records"], int(grey)]
                    index["records"] += 1
                for path, why in bad:
                    index["files"][path] = [want[paths.index(path, offset)], "bad", why]
                last = offset + DECODE >= len(paths)
                if last or time.monotonic() - saved >= SAVE_EVERY_S:
                    out.flush()
                    os.fsync(out.fileno())
                    atomic_write_text(folder / INDEX, json.dumps(index) + "\n")
                    saved = time.monotonic()
                bar(len(arrays) + len(bad))
    except OSError as e:
        raise CacheUnavailable(f"{write_failed(data, e)}; the cache keeps every image written before, and the next run "
                        "goes on from there (or set data.cache_dir elsewhere, or data.cache=stream)") from None


def _new_index(size: int) -> dict:
    return {"format": FORMAT, "size": size, "records": 0, "files": {}}


def _read_index(folder: Path, size: int, notes: list[str]) -> dict:
    """The folder's index, or a new one when there is none or it cannot be trusted (and why)."""
    path = folder / INDEX
    if not path.is_file():
        return _new_index(size)
    why = None
    try:
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT or index.get("size") != size:
            why = f"was written by another version (format {index.get('format')}, this is {FORMAT})"
    except (OSError, ValueError):
        why = f"has an unreadable {INDEX}"
    if why is None:
        have, need = _size(folder / DATA), index["records"] * 3 * size * size
        if have < need:
            why = f"is truncated ({DATA} has {have:,} of {need:,} bytes)"
    if why is None:
        return index
    notes.append(f"decoded cache {folder} {why}: rebuilding it")
    (folder / DATA).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    return _new_index(size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@contextlib.contextmanager
def _hold(f):
    try:
        import fcntl
    except ImportError:  # Windows: no flock; two runs building one cache at once there may both decode
        fcntl = None
    if fcntl is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _locked(path: Path):
    """An exclusive lock held by this open file: a second process (or thread) blocks until it is free.
    The file is opened here, so a folder that cannot take it fails before anything is read."""
    return _hold(open(path, "a"))


def _wait_for(folder: Path, paths: list[str], want: list, poll_s: float = 0.5) -> dict:
    """The index once it names every file as it is now (built by another process on this machine).
    Polled rather than a collective barrier: a build can outlast train.dist_timeout, and if the
    builder fails torchrun stops this process with it."""
    while True:
        try:
            index = json.loads((folder / INDEX).read_text())
            if all(_entry(index, p, want[i]) is not None for i, p in enumerate(paths)):
                return index
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(poll_s)


def _check_writable(base: Path) -> None:
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = base / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CacheUnavailable(f"the disk cache folder {base} is not writable ({e.strerror}): set data.cache_dir to a "
                        "writable folder, or data.cache=stream") from None
