"""Inference speed by batch size on this CPU: which train.eval_batch_size a CPU recipe should validate and test at.

    .venv/bin/python benchmarks/eval_batch.py RECIPE [key=value ...] [--sizes 64 128 256 512 1000] [--nchw] [--record]

The recipe's model (its first ladder rung, channels-last, random weights) infers --images random uint8
images at the recipe's px and channels, at each batch size, through evaluate/inference.py's ``infer``
(what validation and the test use), in the precision a run here would infer in; the best of --repeats
passes. On a CPU a smaller batch can be faster: its activations stay in cache. --nchw keeps the weights in
NCHW while the inputs are channels-last (how a loaded model was built before it followed its training layout).
Set RESNETLAB_CPU_BF16=0 (with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``) to see an AVX2-only CPU's
fp32 path.
Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from resnetlab.config import load_config
from resnetlab.device import hardware_class, resolve_precision
from resnetlab.evaluate.inference import infer
from resnetlab.models import get_model
from resnetlab.train.session import model_options


def images_per_s(model, images: torch.Tensor, batch: int, precision: str, repeats: int) -> float:
    """The best of ``repeats`` passes over ``images`` at ``batch`` (one untimed pass first)."""
    labels = torch.zeros(len(images), dtype=torch.long)
    how = dict(mean=torch.zeros(images.shape[1]), std=torch.ones(images.shape[1]), device=torch.device("cpu"),
               precision=precision, channels_last=True, num_classes=10)
    best = 0.0
    for i in range(repeats + 1):
        out = infer(model, zip(images.split(batch), labels.split(batch)), **how)
        best = max(best, out.images_per_second) if i else best
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1000])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nchw", action="store_true", help="NCHW weights (the inputs stay channels-last)")
    parser.add_argument("--record", action="store_true", help="also write the figures to benchmarks/results/")
    args = parser.parse_args()
    cfg = load_config(args.recipe, args.overrides)
    gray = cfg.data.dataset == "fashion-mnist"
    size, chans = cfg.data.image_size or (28 if gray else 32), 1 if gray else 3
    device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device)
    torch.manual_seed(0)
    model = get_model(cfg.model.name, num_classes=10, in_chans=chans, **model_options(cfg))
    model = (model if args.nchw else model.to(memory_format=torch.channels_last)).eval()
    images = torch.randint(0, 256, (args.images, chans, size, size), dtype=torch.uint8)
    speeds = {b: images_per_s(model, images, b, precision, args.repeats) for b in args.sizes}
    what = f"{cfg.model.name} {cfg.model.filters}, {chans}x{size}x{size}, {precision}" + (", NCHW weights" * args.nchw)
    print(f"{hardware_class(device, precision)}; {what}; recipe eval_batch_size {cfg.train.eval_batch_size}")
    for b, v in speeds.items():
        print(f"  batch {b:5d}: {v:7.0f} img/s")
    print(json.dumps({"model": cfg.model.name, "filters": cfg.model.filters, "precision": precision,
                      "images_per_s": {b: round(v) for b, v in speeds.items()}}))
    if args.record:
        from results import hardware_name, record  # benchmarks/ is on sys.path when this script runs

        figures = [{"metric": f"inference at batch {b}", "value": round(v), "unit": "img/s", "n": args.images,
                    "how": f"best of {args.repeats} passes over {args.images} random images; {what}"}
                   for b, v in speeds.items()]
        name = Path(args.recipe).stem + "".join(f"-{o}" for o in args.overrides) + ("-nchw-weights" * args.nchw)
        print(f"recorded: {record(__file__, name, figures, hardware=hardware_name(device, precision))}")


if __name__ == "__main__":
    main()
