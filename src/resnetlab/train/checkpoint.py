"""Checkpoints as plain dicts of tensors and primitives, written atomically.

A checkpoint loads with ``torch.load(weights_only=True)``: no pickled objects, so
a downloaded file cannot run code. Writes go to a temporary file in the same
folder, are fsynced, then renamed over the old file: a process killed mid-write
leaves the previous checkpoint whole.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.errors import UserError
from resnetlab.io import atomic_write_bytes

FORMAT = "resnetlab-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, foreign or code-carrying files all land here
        raise UserError(f"cannot load checkpoint {path}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a resnetlab checkpoint")
    return state


def load_model_state(model: nn.Module, state: dict[str, Any], *, path: Path, expected: str) -> None:
    """Load weights, saying which model the checkpoint is for when it does not fit."""
    saved = state["model"]
    own = model.state_dict()
    if set(saved) != set(own) or any(saved[k].shape != own[k].shape for k in own):
        made = describe_model(state.get("model_name", "?"), state.get("model_options", {}), state.get("num_classes", "?"))
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
