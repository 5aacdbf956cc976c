"""Figures of a training run: the training monitor (loss, accuracy, learning rate) and the LR range test."""

from __future__ import annotations

import time
from pathlib import Path

from resnetlab.train.lr_find import loss_change

CURVES_EVERY_S = 60.0  # s between redraws while training: a drawing is ~0.3-0.5 s of matplotlib


class Curves:
    """curves.png, the training monitor: drawn at an epoch end once CURVES_EVERY_S have passed since the
    run began or the last drawing, and at the end of the run (or a stop). Drawn every epoch, short epochs
    spent seconds a run in text layout; drawn at the first, a short run paid ~1 s to import matplotlib
    in its first epoch end."""

    def __init__(self, path: Path):
        self.path, self.drawn, self.epochs_drawn = path, time.monotonic(), 0

    def update(self, history: list[dict], *, final: bool = False) -> None:
        if len(history) == self.epochs_drawn:  # nothing new since the last drawing (the end of a run)
            return
        if final or time.monotonic() - self.drawn >= CURVES_EVERY_S:
            training_curves(history, self.path)
            self.drawn, self.epochs_drawn = time.monotonic(), len(history)


MONITORED = "test (monitored, not used for choosing)"


def training_curves(history: list[dict], path: Path) -> None:
    """Loss, top-1 accuracy and learning rate against epoch: the tutorials' training monitor."""
    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    if any("val_loss" in h for h in history):
        ax.plot(epochs, [h.get("val_loss") for h in history], "o-", label="val")
    if any("test_loss" in h for h in history):  # train.monitor=test
        ax.plot(epochs, [h.get("test_loss") for h in history], "o--", label=MONITORED)
    ax.set(title="loss", xlabel="epoch")
    ax.legend()
    ax = axes[1]
    multi = any("train_exact" in h for h in history)  # multi-label: exact match in train, mAP on val
    ax.plot(epochs, [100 * h["train_exact" if multi else "train_top1"] for h in history], "o-",
            label="train exact match (augmented)" if multi else "train (augmented)")
    val_key = "val_map" if multi else "val_top1"
    if any(val_key in h for h in history):
        ax.plot(epochs, [100 * h.get(val_key, float("nan")) for h in history], "o-",
                label="val mAP" if multi else "val")
    test_key = "test_map" if multi else "test_top1"
    if any(test_key in h for h in history):
        ax.plot(epochs, [100 * h.get(test_key, float("nan")) for h in history], "o--", label=MONITORED)
    ax.set(title="exact match / mAP (%)" if multi else "top-1 accuracy (%)", xlabel="epoch")
    ax.legend()
    ax = axes[2]
    ax.plot(epochs, [h["lr"] for h in history], "o-")
    ax.set(title="learning rate (at epoch end)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def lr_find_curves(result, path: Path, window: int) -> None:
    """Loss against learning rate (log axis) with the suggestion, and the loss's rate of change."""
    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ax = axes[0]
    ax.plot(result.lr, result.loss, alpha=0.3, label="loss a step")
    ax.plot(result.lr, result.smoothed, label="smoothed")
    ax.axvline(result.suggested_lr, color="C3", ls="--", label=f"suggested {result.suggested_lr:.1e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="LR range test")
    top = min(max(result.smoothed), 3 * min(result.smoothed) + 1)
    ax.set_ylim(min(result.loss) * 0.95, top)
    ax.legend()
    ax = axes[1]
    ax.plot(result.lr, loss_change(result.loss, window))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xscale="log", xlabel="learning rate", ylabel="d(loss) a step",
           title=f"rate of change of the loss (moving average over {window} steps)")
    change = [v for v in loss_change(result.loss, window) if v == v]
    if change:
        spread = max(abs(min(change)), 1e-6)
        ax.set_ylim(-1.5 * spread, 1.5 * spread)
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, path)
