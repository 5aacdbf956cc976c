"""Figures, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from resnetlab.checkpoint import atomic_write_bytes  # noqa: E402


def save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def training_curves(history: list[dict], path: Path) -> None:
    """Loss, top-1 accuracy and learning rate against epoch: the tutorials' training monitor."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    if any("val_loss" in h for h in history):
        ax.plot(epochs, [h.get("val_loss") for h in history], "o-", label="val")
    ax.set(title="loss", xlabel="epoch")
    ax.legend()
    ax = axes[1]
    ax.plot(epochs, [100 * h["train_top1"] for h in history], "o-", label="train (augmented)")
    if any("val_top1" in h for h in history):
        ax.plot(epochs, [100 * h.get("val_top1", float("nan")) for h in history], "o-", label="val")
    ax.set(title="top-1 accuracy (%)", xlabel="epoch")
    ax.legend()
    ax = axes[2]
    ax.plot(epochs, [h["lr"] for h in history], "o-")
    ax.set(title="learning rate (at epoch end)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
