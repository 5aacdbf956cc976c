"""Figures of an evaluation: confusion matrices, image grids, probability bars, reliability, Grad-CAM overlays,
and per-class average precision (multi-label)."""

from __future__ import annotations

from pathlib import Path


def confusion_figure(confusion, classes: list[str], path: Path, *, normalized: bool) -> None:
    """The confusion matrix as an image; counts written in cells up to 20 classes, names up to 60."""
    import numpy as np

    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

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


def hwc(images):
    """uint8 (N, C, H, W) torch images, grey repeated to 3 channels -> (N, H, W, 3) numpy, for imshow."""
    x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    return x.permute(0, 2, 3, 1).cpu().numpy()


def ap_bars(classes: list[str], aps: list, chance: list[float], path: Path, *, title: str) -> None:
    """Each class's average precision as a bar, best first, with its chance level (the class's prevalence,
    the AP of uninformed scores) as a black tick; a class without a positive image has no bar."""
    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

    order = sorted(range(len(classes)), key=lambda i: -1.0 if aps[i] is None else -aps[i])[::-1]
    k = len(classes)
    fig, ax = plt.subplots(figsize=(7.5, min(max(2.5, 0.24 * k + 1.2), 40.0)))
    ys = range(k)
    ax.barh(ys, [100 * (aps[i] or 0.0) for i in order], color="tab:blue", label="AP")
    ax.scatter([100 * chance[i] for i in order], ys, marker="|", s=120, color="black", label="chance (prevalence)")
    labels = [classes[i] + (" (no positives)" if aps[i] is None else "") for i in order]
    ax.set_yticks(ys, labels, fontsize=7 if k > 30 else 9)
    ax.set(xlim=(0, 100), xlabel="average precision (%)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
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
    import numpy as np

    from resnetlab.plotting import plt  # matplotlib loads when a figure is drawn

    heat = plt.get_cmap("jet")(cam)[..., :3] * 255
    return (image * (1 - alpha) + heat * alpha).clip(0, 255).astype(np.uint8)
