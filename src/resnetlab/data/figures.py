"""Figures of a data set before training: images per class, sizes, sample rows, augmented views."""

from __future__ import annotations

from pathlib import Path


def class_counts(classes: list[str], counts: dict[str, list[int]], path: Path) -> None:
    """Images per class, one horizontal bar a class, stacked by split: imbalance at a glance."""
    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

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
    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

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

    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

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
    from resnetlab.plotting import plt, save_figure  # matplotlib loads when a figure is drawn

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
