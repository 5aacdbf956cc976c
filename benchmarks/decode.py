"""JPEG decoding for 224 px training: Pillow (resnetlab's loader) against torchvision.io.decode_jpeg.

    .venv/bin/python benchmarks/decode.py [--images 600] [--workers 2]

Writes --images JPEGs at 256-320 px (quality 90) made from the real CIFAR-10 photos, then with
--workers threads: decoding alone (Pillow; torchvision.io.decode_jpeg), and decoding + resizing to
224 x 224 three ways: resnetlab.data.images.load_array (Pillow throughout), decode_jpeg + Pillow's
resize (the only swap that keeps every cached pixel), decode_jpeg + v2.functional.resize (other
pixels). Prints images/s for each, best of 3 passes (the files are in the page cache after the
first), and how many decodes agree pixel for pixel.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

from resnetlab.data.images import load_array


def make(folder: Path, count: int, source: Path) -> list[str]:
    files = sorted(source.glob("train/*/*.jpg"))
    out = []
    for i in range(count):
        side = 256 + 16 * (i % 5)
        path = folder / f"{i:05d}.jpg"
        Image.open(files[i % len(files)]).convert("RGB").resize((side, side), Image.BICUBIC).save(path, quality=90)
        out.append(str(path))
    return out


def pillow(path: str) -> object:
    return load_array(path, 224, "squash", None, 0.0)[0]


def pillow_decode(path: str) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def torchvision_decode(path: str) -> torch.Tensor:
    return decode_jpeg(read_file(path), mode=ImageReadMode.RGB)


def torchvision_then_pillow(path: str) -> Image.Image:
    image = Image.fromarray(torchvision_decode(path).permute(1, 2, 0).numpy())
    return image.resize((224, 224), Image.Resampling.BILINEAR, reducing_gap=3.0)  # as load_array resizes


def torchvision_io(path: str) -> torch.Tensor:
    return TF.resize(torchvision_decode(path), [224, 224], antialias=True)


def rate(fn, paths: list[str], workers: int) -> float:
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fn, paths, chunksize=16))
        best = max(best, len(paths) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-jpeg"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # one image a thread, as in DataLoader workers
    with tempfile.TemporaryDirectory() as tmp:
        paths = make(Path(tmp), args.images, args.data)
        rows = (("decode: Pillow", pillow_decode), ("decode: decode_jpeg", torchvision_decode),
                ("224 px: Pillow (load_array)", pillow), ("224 px: decode_jpeg + Pillow", torchvision_then_pillow),
                ("224 px: decode_jpeg + v2 resize", torchvision_io))
        for name, fn in rows:
            print(f"{name:>32}: {rate(fn, paths, args.workers):7.1f} img/s, {args.workers} threads")
        same = sum(np.array_equal(np.asarray(pillow_decode(p)), torchvision_decode(p).permute(1, 2, 0).numpy())
                   for p in paths)
        print(f"decodes identical pixel for pixel: {same} of {len(paths)}")


if __name__ == "__main__":
    main()
