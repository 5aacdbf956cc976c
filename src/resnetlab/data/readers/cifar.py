"""CIFAR-10 and CIFAR-100 in their original python format.

The batches are pickles, which can run code when loaded; this reader lets them
build only numpy arrays and plain containers, so a tampered file fails instead.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from resnetlab.errors import UserError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR file refers to {module}.{name}, which is not allowed")


def _load(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} is missing: the CIFAR folder is incomplete")
    try:
        with open(path, "rb") as f:
            raw = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unreadable batch is the user's to re-download
        raise UserError(f"cannot read CIFAR batch {path}: {e}") from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def is_cifar_folder(root: Path) -> bool:
    return (root / "data_batch_1").is_file() or (root / "train").is_file() and (root / "meta").is_file()


def load_cifar_folder(root: Path) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Classes, and {'train': (images (N, 3, 32, 32) uint8, labels (N,) int64), 'test': ...}."""
    if (root / "data_batch_1").is_file():  # CIFAR-10
        meta = _load(root / "batches.meta")
        classes = [c.decode() for c in meta["label_names"]]
        parts = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        label_key = "labels"
    else:  # CIFAR-100: fine labels
        meta = _load(root / "meta")
        classes = [c.decode() for c in meta["fine_label_names"]]
        parts, label_key = {"train": ["train"], "test": ["test"]}, "fine_labels"
    out = {}
    for split, names in parts.items():
        batches = [_load(root / n) for n in names if (root / n).is_file() or split == "train"]
        if not batches:
            continue
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        out[split] = (data.reshape(-1, 3, 32, 32), labels)
    return classes, out
