"""Images/s of the memory cache, the disk cache and streaming, and a data set bigger than the cache.

    .venv/bin/python benchmarks/data_paths.py speed [--data ../shared/data/cifar10-jpeg]
    .venv/bin/python benchmarks/data_paths.py big [--images 20000 --size 160]

speed: the same half-width ResNet-9 at 32 px on the same images, trained for 2 epochs with each
data path (data.cache=memory, disk, stream, and stream from WebDataset shards of the same images
written by `resnetlab data shards`), and a plain torchvision loop (ImageFolder +
DataLoader with 2 workers + the same model, step and bf16 autocast) as the reference for
streaming; images/s of epoch 2 (epoch 1 carries the warm-up and, for disk, the build).

big: writes a data set from the real CIFAR-10 photos upscaled to --size px JPEGs (several GiB
decoded), trains with data.cache=auto and data.cache_max_gb=1 (so it does not fit the memory
cache) at batch 32, and reports the choice, the build time, images/s and this process's peak RSS
(at batch 128 the model's own activations at 160 px take the peak to ~4.5 GiB).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from resnetlab.config import load_config
from resnetlab.data.shards import write_shards
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare

MODEL = ["model.name=resnet9", "model.filters=[32,64,128,256]", "train.batch_size=128", "train.progress=false",
         "train.report=false", "train.final_test=false", "train.tensorboard=false", "augment.crop_padding=4"]


def train(dataset: str, out: Path, *extra: str) -> tuple[dict, float, list[str]]:
    """(last epoch's record, seconds of prepare() = loading/decoding/building, data notes)."""
    start = time.perf_counter()
    s = prepare(load_config(None, [f"data.dataset={dataset}", f"train.out_dir={out}", *MODEL, *extra]),
                run_name="bench")
    loaded = time.perf_counter() - start
    fit(s)
    return s.state.history[-1], loaded, s.data.notes


def plain_loop(root: str, epochs: int = 2) -> float:
    """Images/s of the last epoch of the loop a torchvision tutorial writes."""
    import torch
    import torch.nn.functional as F
    from torchvision import datasets
    from torchvision.transforms import v2

    from resnetlab.models import get_model

    tf = v2.Compose([v2.ToImage(), v2.RandomCrop(32, padding=4, padding_mode="reflect"), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])])
    data = datasets.ImageFolder(Path(root) / "train", transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=128, shuffle=True, num_workers=2, drop_last=True,
                                         persistent_workers=True)
    model = get_model("resnet9", num_classes=10, filters=[32, 64, 128, 256]).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(y)
    return seen / (time.perf_counter() - start)


def speed(data: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows = {}
        start = time.perf_counter()
        write_shards(data, out / "shards", shard_size="64MB", progress=False)
        print(f"wrote shards in {time.perf_counter() - start:.1f} s", flush=True)
        for mode, source in (("memory", data), ("disk", data), ("stream", data), ("shards", str(out / "shards"))):
            cache = "stream" if mode == "shards" else mode
            record, loaded, _ = train(source, out / mode, "train.epochs=2", f"data.cache={cache}", "data.image_size=32",
                                      f"data.cache_dir={out / 'cache'}", f"train.name={mode}")
            rows[mode] = record["images_per_s"]
            print(f"{mode:>7}: {record['images_per_s']:6.0f} img/s (epoch 2), {loaded:.1f} s to load", flush=True)
        plain = plain_loop(data)
        print(f"  plain: {plain:6.0f} img/s (torchvision ImageFolder + DataLoader, 2 workers)")
        print(f"disk / memory {rows['disk'] / rows['memory']:.2f}x; stream / plain {rows['stream'] / plain:.2f}x; "
              f"shards / plain {rows['shards'] / plain:.2f}x")


def make_big(source: Path, target: Path, count: int, size: int) -> None:
    """``count`` JPEGs at ``size`` px from the real CIFAR-10 photos, in class folders (quality 90)."""
    from PIL import Image

    files = sorted((source / "train").glob("*/*.jpg"))
    for i in range(count):
        src = files[i % len(files)]
        folder = target / "train" / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(src).convert("RGB").resize((size, size), Image.BICUBIC).save(folder / f"{i:06d}.jpg", quality=90)


def big(count: int, size: int, source: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-big-"))
    try:
        start = time.perf_counter()
        make_big(source, tmp / "data", count, size)
        print(f"wrote {count} JPEGs at {size} px ({count * 3 * size * size / 2**30:.2f} GiB decoded) "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        record, loaded, notes = train(str(tmp / "data"), tmp / "runs", "train.epochs=1", "data.cache=auto",
                                      "data.cache_max_gb=1", f"data.image_size={size}",
                                      f"data.cache_dir={tmp / 'cache'}", "train.limit_batches=20",
                                      "train.batch_size=32")  # batch 128 at 160 px: 4.5 GiB of activations
        for n in notes:
            print(f"note: {n}")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        print(f"loading and building: {loaded:.0f} s; training: {record['images_per_s']:.1f} img/s over 20 batches; "
              f"peak RSS of this process {rss:.2f} GiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["speed", "big"])
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()
    if args.what == "speed":
        speed(args.data)
    else:
        big(args.images, args.size, Path(args.data))


if __name__ == "__main__":
    main()
