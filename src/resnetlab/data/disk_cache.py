"""data.cache=disk: images decoded once, at the training size, into files of fixed-size records.

Format: per split, ``<split>.u8`` holds N records of C x S x S uint8 bytes (the in-memory cache's
(C, S, S) layout, always 3 channels as decoded), with ``meta.json`` beside it. Batches are read
with ``os.pread``, one record an image, into a fresh buffer: resident memory stays a few batches
whatever the file's size (a numpy memmap counts every page it touches as resident, so a 10 GB
cache would show as 10 GB RSS), and no dependency is needed (h5py's chunked, compressed layout
helps neither random batches nor small uint8 records; its files are one more format to trust).

The folder is ``<cache_dir>/<key>``, key = SHA-256 of the format version, every file's path,
size and mtime in split order, the resize policy, size and crop boxes. A build writes into
``<key>.partial`` and renames it when complete, so an interrupted build is never read as a
cache; ``progress.json`` is rewritten after every chunk, so the next run continues from there.
A cache whose files are shorter than meta.json says, or whose data set changed since, is
rebuilt with one line saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from resnetlab.data.archive import source_stat
from resnetlab.data.cache import decode_files, progress_bar, set_channels
from resnetlab.errors import UserError
from resnetlab.io import atomic_write_text, read_json, write_failed

FORMAT = 1
CHUNK = 2048  # images decoded between progress saves (~2 s at 224 px on 2 cores)
DECODE = 256  # images decoded at a time: 38 MB at 224 px (a whole CHUNK was 300 MB, and stayed in RSS)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resnetlab"


class DiskImages:
    """A split's images on disk: ``[index]`` reads those records as a uint8 (B, C, S, S) tensor."""

    def __init__(self, path: Path, n: int, size: int, channels: int):
        self.path, self.n, self.size, self.channels = path, n, size, channels
        self.record = 3 * size * size  # bytes
        self.shape = (n, channels, size, size)
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):  # DataLoader workers and deepcopy get a closed handle; each reopens its own
        return {**self.__dict__, "_fd": None}

    def __getitem__(self, index) -> torch.Tensor:
        rows = np.arange(self.n)[index] if isinstance(index, slice) else np.asarray(torch.as_tensor(index).cpu())
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        out = np.empty((len(rows), self.record), dtype=np.uint8)
        for j, r in enumerate(rows.reshape(-1).tolist()):
            got = os.preadv(self._fd, [memoryview(out[j])], r * self.record)
            if got != self.record:
                raise UserError(f"the disk cache {self.path} ends early (record {r}): delete it and run again")
        x = torch.from_numpy(out).view(len(rows), 3, self.size, self.size)
        return set_channels(x, self.channels)

    def split(self, chunk: int):
        """Consecutive chunks, like Tensor.split, read one at a time."""
        for start in range(0, self.n, chunk):
            yield self[slice(start, min(start + chunk, self.n))]

    def to(self, device) -> "DiskImages":
        return self  # stays on disk; loaders move each batch


def cache_key(files: dict[str, tuple[list[str], list, object]], *, size: int, resize: str, margin: float) -> str:
    digest = hashlib.sha256(f"{FORMAT}|{size}|{resize}|{margin}".encode())
    for name, (paths, labels, boxes) in files.items():
        digest.update(f"[{name}]".encode())
        for i, p in enumerate(paths):
            size_b, mtime_ns = source_stat(p)  # a shard member: its size and its shard's mtime
            box = "" if boxes is None else ",".join(str(int(v)) for v in boxes[i])
            digest.update(f"{p}|{size_b}|{mtime_ns}|{labels[i]}|{box}\n".encode())
    return digest.hexdigest()[:24]


def open_or_build(files, *, root: str, cache_dir: str, size: int, resize: str, margin: float, on_bad_image: str,
                  progress: bool, notes: list[str], builder: bool = True) -> dict:
    """The disk cache of ``files`` ({split: (paths, labels, boxes)}), built if missing; returns meta.json's
    content with ``folder``. ``notes`` gets a line when an old cache is replaced, and why. Under
    torchrun only the machine's first process is the ``builder``: the others wait for its cache."""
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(files, size=size, resize=resize, margin=margin)
    folder = base / key
    if not builder:
        return _wait_for(folder, notes)
    _check_writable(base)
    index_path = base / "index.json"
    index = read_json(index_path) if index_path.is_file() else {}
    owner = hashlib.sha256(f"{root}|{size}|{resize}|{margin}".encode()).hexdigest()[:16]
    previous = index.get(owner)
    if folder.is_dir():
        meta, why = _check(folder)
        if why is None:
            notes.append(f"disk cache: reading {folder}")
            return meta
        notes.append(f"disk cache {folder} {why}: rebuilding it")
        shutil.rmtree(folder, ignore_errors=True)
    elif previous and previous != key and (base / previous).is_dir():
        notes.append(f"the data set changed since its disk cache {base / previous} was built (files added, removed "
                     "or modified): building a new one")
        shutil.rmtree(base / previous, ignore_errors=True)
    meta = _build(files, folder, size=size, resize=resize, margin=margin, on_bad_image=on_bad_image, progress=progress)
    notes.append(f"disk cache: built {folder} ({meta['bytes'] / 2**30:.2f} GiB)")
    index[owner] = key
    atomic_write_text(index_path, json.dumps(index, indent=2) + "\n")
    return meta


def _wait_for(folder: Path, notes: list[str], poll_s: float = 0.5) -> dict:
    """The cache another process on this machine is building, once complete. Polled rather than a
    collective barrier: a build can outlast train.dist_timeout, and if the builder fails torchrun
    stops this process with it."""
    while True:
        if folder.is_dir():
            meta, why = _check(folder)
            if why is None:
                notes.append(f"disk cache: reading {folder} (built by local rank 0)")
                return meta
        time.sleep(poll_s)


def _check_writable(base: Path) -> None:
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = base / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"the disk cache folder {base} is not writable ({e.strerror}): set data.cache_dir to a "
                        "writable folder, or data.cache=stream") from None


def _check(folder: Path) -> tuple[dict | None, str | None]:
    """(meta, None) for a usable cache, else (None, why not)."""
    try:
        meta = read_json(folder / "meta.json")
    except UserError:
        return None, "has no readable meta.json"
    if meta.get("format") != FORMAT:
        return None, f"was written by another version (format {meta.get('format')}, this is {FORMAT})"
    for name, split in meta["splits"].items():
        path, want = folder / f"{name}.u8", len(split["kept"]) * 3 * meta["size"] ** 2
        have = path.stat().st_size if path.is_file() else 0
        if have != want:
            return None, f"is truncated ({name}.u8 has {have:,} of {want:,} bytes)"
    return {**meta, "folder": str(folder)}, None


def _build(files, folder: Path, *, size, resize, margin, on_bad_image, progress) -> dict:
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(exist_ok=True)
    state_path = partial / "progress.json"
    state = read_json(state_path) if state_path.is_file() else {}
    record = 3 * size * size
    total = sum(len(paths) for paths, _, _ in files.values())
    done_before = sum(s["done"] for s in state.values())
    bar = progress_bar(progress, total, "building the disk cache", done=done_before)
    for name, (paths, labels, boxes) in files.items():
        s = state.setdefault(name, {"done": 0, "kept": [], "grey": [], "skipped": []})
        target = partial / f"{name}.u8"
        try:
            with open(target, "ab") as out:
                out.truncate(len(s["kept"]) * record)  # drop a chunk written after the last progress save
                for start in range(s["done"], len(paths), CHUNK):
                    stop = min(start + CHUNK, len(paths))
                    for a in range(start, stop, DECODE):  # decoded pixels held: DECODE images, not CHUNK
                        b = min(a + DECODE, stop)
                        arrays, greys, kept, bad = decode_files(paths[a:b], size=size, resize=resize,
                                                                on_bad_image=on_bad_image, progress=False,
                                                                boxes=None if boxes is None else boxes[a:b],
                                                                margin=margin)
                        for arr in arrays:
                            if arr.shape != (size, size, 3):
                                raise UserError("the disk cache needs one image size: set data.image_size=N")
                            out.write(np.ascontiguousarray(arr.transpose(2, 0, 1)).tobytes())
                        s["kept"] += [a + k for k in kept]
                        s["grey"] += [bool(g) for g in greys]
                        s["skipped"] += [list(x) for x in bad]
                    out.flush()
                    s["done"] = stop
                    atomic_write_text(state_path, json.dumps(state) + "\n")
                    bar(stop - start)
        except OSError as e:
            raise UserError(f"{write_failed(target, e)}; the partial cache {partial} resumes on the next run "
                            "(or set data.cache_dir elsewhere, or data.cache=stream)") from None
    meta = {"format": FORMAT, "size": size, "resize": resize, "splits": state,
            "bytes": sum(len(s["kept"]) for s in state.values()) * record}
    atomic_write_text(partial / "meta.json", json.dumps(meta) + "\n")
    state_path.unlink()
    os.replace(partial, folder)
    return {**meta, "folder": str(folder)}
