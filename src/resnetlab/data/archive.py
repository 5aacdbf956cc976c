"""Files inside tar shards, addressed as ``<shard>.tar/<member>``, read like files on disk.

A data set written as WebDataset shards (data/shards.py) keeps one path per image, as
class folders do: the shard's path, a slash, and the member's name inside it. Every
reader of image files (decoding, the disk cache's key, inspect) goes through
``member_bytes`` and ``source_stat``, so a shard member behaves as a file does.

Members are read by offset (``pread``) from an index of the shard's headers, built once
per process and shard: a tar keeps no table of contents, and scanning 10,000 headers
takes ~50 ms, where reading one member by offset takes microseconds.
"""

from __future__ import annotations

import os
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np

MARK = ".tar/"


def split_member(source: str | Path) -> tuple[str, str] | None:
    """(shard path, member name) for ``a/b-000001.tar/000042.jpg``; None for any other path."""
    text = str(source)
    i = text.find(MARK)
    if i < 0:
        return None
    return text[: i + 4], text[i + len(MARK):]


@lru_cache(maxsize=256)
def _index(shard: str, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """{member name: (byte offset of its data, size)}; keyed by mtime so a rewritten shard is re-read."""
    with tarfile.open(shard, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}


def member_index(shard: str) -> tuple[dict[str, tuple[int, int]], int]:
    """The shard's member index and its mtime in ns (one stat gives both)."""
    mtime_ns = os.stat(shard).st_mtime_ns
    return _index(shard, mtime_ns), mtime_ns


def member_bytes(source: str | Path) -> bytes | None:
    """The bytes of a shard member, or None when ``source`` is not inside a shard. A shard or member
    that is gone raises FileNotFoundError, as a missing file does."""
    parts = split_member(source)
    if parts is None:
        return None
    shard, name = parts
    try:
        offset, size = member_index(shard)[0][name]
    except KeyError:
        raise FileNotFoundError(f"{name} is not in {shard}") from None
    except tarfile.TarError as e:
        raise OSError(f"shard {shard} is not a readable tar file ({e})") from None
    fd = os.open(shard, os.O_RDONLY)
    try:
        data = os.pread(fd, size, offset)
    finally:
        os.close(fd)
    if len(data) != size:
        raise OSError(f"shard {shard} is truncated inside {name}")
    return data


def source_stat(source: str | Path) -> tuple[int, int]:
    """(size in bytes, mtime in ns) of a file or of a shard member (its shard's mtime)."""
    parts = split_member(source)
    if parts is None:
        st = os.stat(source)
        return st.st_size, st.st_mtime_ns
    shard, name = parts
    index, mtime_ns = member_index(shard)
    if name not in index:
        raise FileNotFoundError(f"{name} is not in {shard}")
    return index[name][1], mtime_ns


def shard_of(paths: list[str]) -> np.ndarray | None:
    """The shard number of each path (0, 1, ... by first appearance), or None unless all are shard members."""
    ids: dict[str, int] = {}
    out = np.empty(len(paths), dtype=np.int64)
    for i, p in enumerate(paths):
        parts = split_member(p)
        if parts is None:
            return None
        out[i] = ids.setdefault(parts[0], len(ids))
    return out
