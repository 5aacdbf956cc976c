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


def class_counts(classes: list[str], counts: dict[str, list[int]], path: Path) -> None:
    """Images per class, one horizontal bar a class, stacked by split: imbalance at a glance."""
    k = len(classes)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.18 * k + 1)))
    left = [0] * k
    for split, values in counts.items():
        ax.barh(range(k), values, left=left, label=split, height=0.8)
        left = [a + b for a, b in zip(left, values)]
    ax.set_yticks(range(k), classes, fontsize=7 if k > 20 else 9)
    ax.invert_yaxis()
    ax.set(xlabel="images", title=f"images per class ({k} classes, {sum(left):,} images)")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def image_sizes(widths, heights, path: Path) -> None:
    """Width against height of every image (a 2-d histogram), and the short side's distribution."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].hist2d(widths, heights, bins=40, cmin=1, cmap="viridis")
    axes[0].set(xlabel="width (px)", ylabel="height (px)", title=f"image sizes (n={len(widths):,})")
    short = [min(w, h) for w, h in zip(widths, heights)]
    axes[1].hist(short, bins=40)
    axes[1].set(xlabel="short side (px)", ylabel="images", title="short side")
    fig.tight_layout()
    save_figure(fig, path)


def sample_grid(names: list[str], tiles: list, columns: int, path: Path) -> None:
    """One row of training images per class, the class name beside it.

    tiles: per class, (n <= columns, S, S, 3) uint8. Drawn as one composed
    picture (not an axis per image): 43 x 8 axes take matplotlib ~20 s.
    """
    import numpy as np

    size = tiles[0].shape[1] if tiles else 64
    grid = np.full((len(names) * (size + 2), columns * (size + 2), 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            grid[r * (size + 2):r * (size + 2) + size, c * (size + 2):c * (size + 2) + size] = tile
    fig, ax = plt.subplots(figsize=(1.0 + columns * 0.9, 0.5 + len(names) * 0.9))
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([r * (size + 2) + size / 2 for r in range(len(names))], names, fontsize=8)
    ax.set_xticks([])
    ax.set_title("training images per class")
    save_figure(fig, path)


def augment_grid(views, title: str, path: Path) -> None:
    """One image under the training augmentation: the first is as loaded, the rest augmented."""
    n = len(views)
    cols = 4
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.8, rows * 1.8 + 0.4))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(views[i], interpolation="nearest")
            ax.set_title("as loaded" if i == 0 else f"view {i}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def lr_find_curves(result, path: Path, window: int) -> None:
    """Loss against learning rate (log axis) with the suggestion, and the loss's rate of change."""
    from resnetlab.lr_find import loss_change

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


def confusion_figure(confusion, classes: list[str], path: Path, *, normalized: bool) -> None:
    """The confusion matrix as an image; counts written in cells up to 20 classes, names up to 60."""
    import numpy as np

    cm = np.asarray(confusion, dtype=float)
    k = len(classes)
    side = min(max(5.0, 0.28 * k + 2), 30.0)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalized else cm
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalized else None, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the true class" if normalized else "images")
    if k <= 60:
        ticks = range(k)
        ax.set_xticks(ticks, classes, rotation=90, fontsize=7 if k > 20 else 9)
        ax.set_yticks(ticks, classes, fontsize=7 if k > 20 else 9)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    text = f"{shown[i, j]:.2f}" if normalized else f"{int(cm[i, j])}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if shown[i, j] > 0.6 * shown.max() else "black")
    ax.set(xlabel="predicted", ylabel="true",
           title=f"confusion matrix{' (row-normalised)' if normalized else ''}, n={int(cm.sum()):,}")
    save_figure(fig, path)


def image_grid(images, titles: list[str], colors: list[str], path: Path, *, suptitle: str, cols: int = 4) -> None:
    """uint8 (N, H, W, 3) images with a title each (colour: green right, red wrong)."""
    n = len(images)
    rows = max(1, (n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.9, rows * 3.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(titles[i], fontsize=7, color=colors[i])
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def probability_bars(probs, classes: list[str], image, title: str, path: Path, top: int = 10) -> None:
    """One image beside a horizontal bar chart of its most likely classes."""
    order = sorted(range(len(classes)), key=lambda i: -float(probs[i]))[:top]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [1, 2]})
    left.imshow(image, interpolation="nearest")
    left.axis("off")
    left.set_title(title, fontsize=8)
    right.barh([classes[i] for i in order][::-1], [float(probs[i]) for i in order][::-1])
    right.set(xlim=(0, 1), xlabel="probability")
    right.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def reliability_diagram(bins_before: list[dict], bins_after: list[dict] | None, eces: tuple, path: Path) -> None:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    fig, ax = plt.subplots(figsize=(5, 4.6))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    for table, label in ((bins_before, f"raw, ECE {100 * eces[0]:.2f}%"),
                         (bins_after, f"temperature-scaled, ECE {100 * eces[1]:.2f}%" if bins_after else None)):
        if not table:
            continue
        used = [b for b in table if b["n"]]
        ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], "o-", label=label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy",
           title=f"reliability, n={sum(b['n'] for b in bins_before):,}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def overlay(image, cam, alpha: float = 0.45):
    """uint8 (H, W, 3) image blended with a jet-coloured (H, W) map in [0, 1]."""
    import numpy as np

    heat = plt.get_cmap("jet")(cam)[..., :3] * 255
    return (image * (1 - alpha) + heat * alpha).clip(0, 255).astype(np.uint8)
