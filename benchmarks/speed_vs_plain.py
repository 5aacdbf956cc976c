"""Training throughput: resnetlab against the tutorials' plain PyTorch loop, same model, same machine.

Both train the CIFAR-style ResNet-18 (--model another) on the real CIFAR-10 JPEG subset in
../shared/data (32x32, 2,000 training images; --data another folder) for the same number of steps,
on the GPU when there is one:

- plain: torchvision ImageFolder + per-image transforms (RandomCrop(32, padding=4,
  reflect), RandomHorizontalFlip, ToTensor, Normalize) in DataLoader workers,
  fp32, default memory format: how the tutorials write it (--plain-amp: bf16 autocast and
  channels_last, so the ratio is resnetlab's overhead over the same arithmetic).
- resnetlab: `resnetlab train` with the same model and augmentation: images decoded
  once into a uint8 cache, crop and flip done on whole batches, bf16 autocast
  where the CPU has AMX/AVX-512 BF16, channels_last.

The first epoch of each is a warm-up (oneDNN builds its kernels then) and is not
timed. Prints images/s of both and their ratio.

    .venv/bin/python benchmarks/speed_vs_plain.py [--epochs 3] [--batch-size 128] [--workers 2] [--model NAME]
        [--plain-amp] [--data DIR] [key=value ...]

key=value overrides go to the resnetlab run only, e.g. `train.compile=true` (torch.compile: its
compile time falls in the warm-up epoch) or `train.precision=fp32` (what a CPU without bf16 runs).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision.transforms import v2

from resnetlab import fit, get_model, load_config, prepare

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def plain_loop(root: Path, epochs: int, batch_size: int, workers: int, model_name: str, amp: bool) -> float:
    """The tutorials' loop, on the GPU when there is one; ``amp``: bf16 autocast and channels_last too, so the
    two loops do the same arithmetic and the ratio is resnetlab's own overhead."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as resnetlab's prepare() sets it
    transform = v2.Compose([
        v2.RandomCrop(32, padding=4, padding_mode="reflect"),
        v2.RandomHorizontalFlip(),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26)),
    ])
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = get_model(model_name, num_classes=10).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    timed_images, timed_seconds = 0, 0.0
    for epoch in range(epochs):
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if amp:
                x = x.to(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"  plain     epoch {epoch + 1}: {seen / seconds:7.1f} img/s")
        if epoch > 0:
            timed_images, timed_seconds = timed_images + seen, timed_seconds + seconds
    return timed_images / timed_seconds


def resnetlab_loop(root: Path, epochs: int, batch_size: int, model_name: str,
                   overrides: list[str]) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [
            f"data.dataset={root}", f"model.name={model_name}", f"train.epochs={epochs}",
            f"train.batch_size={batch_size}", "augment.crop_padding=4", "augment.hflip=true",
            "optim.lr=0.05", "schedule.name=constant", f"train.out_dir={tmp}", "train.name=bench",
            "train.progress=false", *overrides,
        ])
        session = prepare(cfg, run_name="bench")
        session.loaders.pop("test", None)  # time training only
        fit(session)
        history = [json.loads(line) for line in (session.run_dir / "metrics.jsonl").read_text().splitlines()]
    for h in history:
        print(f"  resnetlab epoch {h['epoch']}: {h['images_per_s']:7.1f} img/s")
    timed = history[1:]
    images = sum(h["images_per_s"] * h["seconds"] for h in timed)
    return images / sum(h["seconds"] for h in timed), session.precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=3, help="epochs over --data's train/; the first is warm-up")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--model", default="cifar_resnet18", help="the model both loops train")
    parser.add_argument("--plain-amp", action="store_true",
                        help="the plain loop in bf16 autocast and channels_last too (same arithmetic as resnetlab's)")
    parser.add_argument("overrides", nargs="*", help="key=value for the resnetlab run")
    parser.add_argument("--record", action="store_true", help="also write the figures to benchmarks/results/")
    parser.add_argument("--results", type=Path, help="where --record writes (default: benchmarks/results/)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data {args.data}")
    plain = plain_loop(args.data, args.epochs, args.batch_size, args.workers, args.model, args.plain_amp)
    ours, precision = resnetlab_loop(args.data, args.epochs, args.batch_size, args.model, args.overrides)
    plain_kind = "bf16 autocast, channels_last" if args.plain_amp else "fp32"
    print(f"plain PyTorch loop ({plain_kind}, per-image transforms, {args.workers} workers): {plain:7.1f} img/s")
    print(f"resnetlab (uint8 cache, batch augmentation, {precision}, channels_last"
          f"{', ' + ' '.join(args.overrides) if args.overrides else ''}): {ours:7.1f} img/s")
    print(f"speed-up: {ours / plain:.2f}x")
    if args.record:
        from results import record  # benchmarks/ is on sys.path when this script runs

        how = f"epochs 2-{args.epochs} of {args.model} at batch {args.batch_size} (epoch 1 is warm-up)"
        figures = [{"metric": "plain PyTorch loop", "value": round(plain, 1), "unit": "img/s", "n": args.epochs - 1,
                    "how": f"{how}; {plain_kind}, per-image transforms, {args.workers} workers"},
                   {"metric": "resnetlab", "value": round(ours, 1), "unit": "img/s", "n": args.epochs - 1,
                    "how": f"{how}; {precision}, uint8 cache, batch augmentation, channels_last"},
                   {"metric": "speed-up over the plain loop", "value": round(ours / plain, 2), "unit": "x", "n": 1,
                    "how": "the two rates' ratio, one sitting"}]
        name = args.model.replace("_", "-") + ("-plain-amp" if args.plain_amp else "") + "".join(
            f"-{o}" for o in args.overrides)
        print(f"recorded: {record(__file__, name, figures, out_dir=args.results)}")


if __name__ == "__main__":
    main()
