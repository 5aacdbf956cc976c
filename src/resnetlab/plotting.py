"""matplotlib with its Agg backend (no display needed), and saving a figure atomically as PNG.

Each layer draws its own figures (data/figures.py, run/figures.py, evaluate/figures.py);
they share this module, so the backend is chosen once, before pyplot is first imported.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from resnetlab.io import atomic_write_bytes  # noqa: E402

__all__ = ["plt", "png_bytes", "save_figure"]


def png_bytes(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot keeps every open one alive)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def save_figure(fig, path: Path) -> None:
    atomic_write_bytes(path, png_bytes(fig))
