"""MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST), gzipped or not.

Format (LeCun): 2 zero bytes, a type byte (0x08 = uint8), a byte with the number
of dimensions, then each dimension as a big-endian uint32, then the data.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from resnetlab.errors import UserError

_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of uint8 (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise UserError(f"{path} is truncated or padded: {len(data)} bytes, header says {expected}")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        for where in (root, root / "raw"):
            if (where / name).is_file():
                return where / name
    return None


def is_idx_folder(root: Path) -> bool:
    return find_idx(root, _STEMS["train"][0]) is not None


def load_idx_folder(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images (N, 1, H, W) uint8, labels (N,) int64), 'test': ...} for the splits present."""
    out = {}
    for split, (img_stem, lbl_stem) in _STEMS.items():
        img_path, lbl_path = find_idx(root, img_stem), find_idx(root, lbl_stem)
        if img_path is None and split == "test":
            continue
        if img_path is None or lbl_path is None:
            missing = img_stem if img_path is None else lbl_stem
            raise UserError(f"{root} has no {missing}[.gz]: an IDX data set needs images and labels")
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(
                f"{img_path.name} has {len(images)} images but {lbl_path.name} has {len(labels)} labels"
            )
        out[split] = (images[:, None].copy(), labels.astype(np.int64))
    return out
