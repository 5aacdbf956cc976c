"""Checkpoints as plain dicts of tensors and primitives, written atomically, with a checksum.

A checkpoint loads with ``torch.load(weights_only=True)``: no pickled objects, so
a downloaded file cannot run code. Writes go to a temporary file in the same
folder, are fsynced, then renamed over the old file: a process killed mid-write
leaves the previous checkpoint whole. Every file ends with a 48-byte trailer,
``RESNETLAB-SHA256`` + the SHA-256 of the bytes before it (torch.load ignores bytes
after its zip archive), so a file damaged after it was written (a flipped bit, a
truncated copy) is caught on load instead of training on garbage. ``last.pt``
keeps the one it replaces as ``previous.pt``, which resume falls back to.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.errors import UserError
from resnetlab.io import atomic_write_bytes

FORMAT = "resnetlab-checkpoint"
VERSION = 1


TRAILER = b"RESNETLAB-SHA256"  # then 32 bytes of SHA-256 over everything before the trailer


class DamagedCheckpoint(UserError):
    """A checkpoint whose bytes are not the ones written (checksum mismatch, truncation)."""


def save_checkpoint(path: Path | list[Path], state: dict[str, Any], *, keep: Path | None = None) -> None:
    """``keep``: where the checkpoint being replaced goes (last.pt -> previous.pt). Several paths
    (last.pt and best.pt of one epoch) get the same bytes, serialised and hashed once."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    data = buffer.getvalue()
    data += TRAILER + hashlib.sha256(data).digest()
    for i, target in enumerate(path if isinstance(path, list) else [path]):
        atomic_write_bytes(target, data, keep=keep if i == 0 else None)


def snapshot(state: Any, into: Any = None) -> Any:
    """A checkpoint state that training can no longer change: every tensor detached and copied where it
    is (on the device: no host copy, no sync), dicts and lists copied. ``into``: an older snapshot no one
    holds any more, whose tensors of the same shape, dtype, device and strides take the copies (a fresh
    allocation of a model's worth of CPU memory costs ~20x the copy in page faults). Saved, it gives the
    same file as ``state`` saved at the moment of the snapshot.

    The copies run on one CPU thread: a copy is bound by memory, not compute, and at an epoch's end the
    loader's workers are busy with the next epoch, so a parallel copy waits on a thread the OS has
    descheduled (~100 ms where one thread takes ~5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _copied(state, into)
    finally:
        torch.set_num_threads(threads)


def _copied(state: Any, into: Any) -> Any:
    if isinstance(state, torch.Tensor):
        state = state.detach()
        if isinstance(into, torch.Tensor) and (into.shape, into.dtype, into.device, into.stride()) == (
                state.shape, state.dtype, state.device, state.stride()):
            return into.copy_(state)
        return state.clone()
    if isinstance(state, dict):
        old = into if isinstance(into, dict) else {}
        return {k: _copied(v, old.get(k)) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        old = into if isinstance(into, (list, tuple)) and len(into) == len(state) else [None] * len(state)
        return type(state)(_copied(v, o) for v, o in zip(state, old))
    return state  # numbers, strings, None: immutable


def _verified(path: Path) -> bytes:
    """The file's torch bytes, after checking the trailer's checksum (files without one load as they are)."""
    data = path.read_bytes()
    end = len(data) - len(TRAILER) - 32
    if end >= 0 and data[end:end + len(TRAILER)] == TRAILER:
        if hashlib.sha256(data[:end]).digest() != data[end + len(TRAILER):]:
            raise DamagedCheckpoint(f"checkpoint {path} is damaged: its SHA-256 does not match the one written "
                                    "with it (a flipped bit or a partial copy); use another checkpoint")
        return data[:end]
    return data  # written before checksums (or cut short, which torch.load then reports)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(io.BytesIO(_verified(path)), map_location="cpu", weights_only=True)
    except DamagedCheckpoint:
        raise
    except Exception as e:  # noqa: BLE001 - truncated, foreign or code-carrying files all land here
        why = (str(e).strip().splitlines() or [f"{type(e).__name__} (empty or cut short)"])[0][:200]
        raise DamagedCheckpoint(f"cannot load checkpoint {path}: {why}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a resnetlab checkpoint")
    return state


def load_model_state(model: nn.Module, state: dict[str, Any], *, path: Path, expected: str) -> None:
    """Load weights, saying which model the checkpoint is for when it does not fit."""
    saved = state["model"]
    own = model.state_dict()
    if set(saved) != set(own) or any(saved[k].shape != own[k].shape for k in own):
        made = describe_model(state.get("model_name", "?"), state.get("model_options", {}),
                              state.get("num_classes", "?"))
        raise UserError(
            f"checkpoint {path} is for {made}, not {expected}; use that model or a checkpoint of this one"
        )
    model.load_state_dict(saved)


def describe_model(name: str, options: dict[str, Any], num_classes: Any) -> str:
    """'resnet9 (filters [16, 32, 64, 128]) with 10 classes': enough to tell two models apart."""
    opts = ", ".join(f"{k} {v}" for k, v in options.items() if v is not None)
    return f"{name}{f' ({opts})' if opts else ''} with {num_classes} classes"


def rng_state() -> dict[str, Any]:
    """The generators a resume needs: the CPU's, and this process's own GPU's (not every GPU's, so a
    checkpoint resumes on any number of GPUs; each torchrun rank drives one)."""
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if saved is None or not torch.cuda.is_available():
        return
    if isinstance(saved, (list, tuple)):  # written by an earlier version: one state per GPU
        saved = saved[min(torch.cuda.current_device(), len(saved) - 1)] if saved else None
    if saved is not None:
        torch.cuda.set_rng_state(saved)
