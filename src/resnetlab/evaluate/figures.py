"""Figures of an evaluation: confusion matrices, image grids, probability bars, reliability, Grad-CAM overlays."""

from __future__ import annotations

from pathlib import Path


def confusion_figure(confusion, classes: list[str], path: Path, *, normalized: bool) -> None:
    """The confusion matrix as an image; counts written in cells up to 20 classes, names up to 60."""
    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

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
    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

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
    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

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
    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

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
    from resnetlab.plotting import plt  # matplotlib loads when a figure is drawn

    import numpy as np

    heat = plt.get_cmap("jet")(cam)[..., :3] * 255
    return (image * (1 - alpha) + heat * alpha).clip(0, 255).astype(np.uint8)
