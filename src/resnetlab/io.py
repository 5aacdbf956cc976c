"""Small file helpers every layer uses: atomic writes, and JSON/YAML/CSV reads that fail in one line.

A write goes to a temporary file beside the target (same folder, so the same file
system: ``os.replace`` is then an atomic rename, never a cross-device copy), is
fsynced, then renamed over the target: a process killed mid-write leaves the
previous file whole and no half-written one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from resnetlab.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def make_folder(folder: Path) -> Path:
    """Create ``folder`` (and its parents) for a new output, or fail in one line."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(folder, e) from None
    return folder


def temporary_path(path: Path) -> Path:
    """A fresh, unused name beside ``path`` for a writer that needs a file name, not bytes
    (the ONNX exporter, onnxruntime's quantiser). Rename it over ``path`` when it is complete.

    The folder must exist (``make_folder`` makes a new one): a folder that vanished mid-run is an
    error, never quietly made again half-filled (a deleted run folder came back with only the
    files written after the deletion)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


class WriteFailed(UserError):
    """A file could not be written (disk full, quota, read-only or vanished folder, failed rename).
    The file it was to replace is untouched, and no partial file is left."""


def write_failed(path: Path, error: OSError) -> WriteFailed:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free on {path.parent}"
    except OSError:
        free = f"{path.parent} is not reachable"
    return WriteFailed(f"could not write {path} ({error.strerror or error}; {free}); the previous "
                       f"{path.name}, if any, is intact: free space or fix the folder, then run again "
                       "(training: resnetlab train --resume RUN)")


def atomic_write_bytes(path: Path, data: bytes, *, keep: Path | None = None, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; with ``keep``, the file it replaces becomes ``keep``
    (``path`` itself is never missing: the old one is linked to ``keep`` before the rename).
    ``durable=False``: no fsync (still whole or absent after a kill, but a power cut may lose it), for a
    file rewritten every epoch and made again from a checkpoint on resume (metrics.jsonl)."""
    path = Path(path)
    tmp = None
    try:
        tmp = temporary_path(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a written file gets the usual mode
        if keep is not None and path.exists():
            _keep_copy(path, Path(keep))
        os.replace(tmp, path)
        if durable:
            sync_folder(path.parent)
    except OSError as e:  # ENOSPC, EDQUOT, EFBIG (RLIMIT_FSIZE), EROFS, ENOENT, EXDEV, EIO...
        _discard(tmp)
        raise write_failed(path, e) from None
    except BaseException:
        _discard(tmp)
        raise


def _keep_copy(path: Path, keep: Path) -> None:
    """``keep`` becomes the current ``path`` (a hard link where the file system has them, else a copy)."""
    staged = temporary_path(keep)
    staged.unlink()
    try:
        os.link(path, staged)
    except OSError:
        shutil.copy2(path, staged)
    os.replace(staged, keep)


def _discard(tmp: Path | None) -> None:
    if tmp is not None:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def sync_folder(folder: Path) -> None:
    """fsync a folder, so a rename inside it survives a power cut."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str, *, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), durable=durable)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _read_text(path: Path, hint: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"{path} is missing{': ' + hint if hint else ''}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def read_json(path: Path, *, what: str = "") -> Any:
    """Parsed JSON, or a one-line UserError naming the file (missing, unreadable or not JSON)."""
    text = _read_text(path, what or f"is {Path(path).parent} a resnetlab run folder?")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); restore it or run the step that writes it again") from None


def read_yaml(path: Path) -> Any:
    import yaml

    text = _read_text(path, "")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None


def csv_text(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def read_csv(path: Path) -> list[list[str]]:
    """Rows of a CSV file (quoted fields handled by the csv module), or a one-line UserError."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [row for row in csv.reader(f) if row]
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path} as CSV: {e}") from None
