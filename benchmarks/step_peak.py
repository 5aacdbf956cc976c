"""What fraction of this machine's 3x3 convolution peak a recipe's training step reaches, and where the rest goes.

    .venv/bin/python benchmarks/step_peak.py RECIPE [key=value ...] [--size PX] [--chans C] [--steps N]

On the CPU, in the precision a run there would train in.
- peak: the best TFLOP/s of a 3x3, stride-1 convolution's forward and backward over a few shapes
  (channels-last, the run's batch), in the precision the run would train in;
- the step: forward, backward and optimiser step of the recipe's model on random images of the
  recipe's batch (no EMA update, no data loading), FLOPs counted by ``torch.utils.flop_counter``,
  the median of N timed steps;
- where the time goes: ``torch.profiler``'s self time per op, grouped: conv, batchnorm, max-pool,
  relu, zero-fill (max-pool's backward zeroes its whole input gradient first: ``fill_``) and other
  (the global max, the loss, the optimiser).

No data is read: --size and --chans give the images (defaults: data.image_size, else 28 px for
fashion-mnist and 32 px for the rest; 1 channel for fashion-mnist, else 3). Set RESNETLAB_CPU_BF16=0 to see
the fp32 path on a CPU with bf16.
Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from resnetlab.config import load_config
from resnetlab.device import autocast, hardware_class, resolve_precision
from resnetlab.models import get_model
from resnetlab.train.session import build_optimizer, model_options

GROUPS = {"convolution": "conv", "batch_norm": "batchnorm", "max_pool": "max-pool", "threshold": "relu",
          "relu": "relu", "clamp_min": "relu", "fill_": "zero-fill", "zero_": "zero-fill"}


def conv_peak(batch: int, precision: str, device: torch.device) -> float:
    """TFLOP/s of the fastest 3x3 convolution (forward + both gradients) among shapes a ResNet-9 has."""
    best = 0.0
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # what autocast feeds the conv
    for channels, px in ((64, 16), (128, 16), (256, 8)):
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
        x = torch.randn(batch, channels, px, px, dtype=dtype).to(memory_format=torch.channels_last)
        x.requires_grad_(True)
        with autocast(device, precision):
            grad_out = torch.ones_like(conv(x))

        # bound as defaults: each shape's closure keeps its own conv and tensors
        def fwd_bwd(conv=conv, x=x, grad_out=grad_out) -> None:
            with autocast(device, precision):
                y = conv(x)
            torch.autograd.grad(y, (x, conv.weight), grad_out)  # nothing accumulates between calls

        flop = 3 * 2 * batch * channels * channels * 9 * px * px  # forward, grad input, grad weight
        best = max(best, flop / _median_s(fwd_bwd, 8) / 1e12)
    return best


def _median_s(fn, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--size", type=int)
    parser.add_argument("--chans", type=int)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--record", action="store_true", help="also write the figures to benchmarks/results/")
    args = parser.parse_args()
    cfg = load_config(args.recipe, args.overrides)
    gray = cfg.data.dataset == "fashion-mnist"
    size = args.size or cfg.data.image_size or (28 if gray else 32)
    chans = args.chans or (1 if gray else 3)
    device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device)
    batch = cfg.train.batch_size
    torch.manual_seed(0)
    classes = cfg.model.num_classes or 10  # the head is a sliver of the FLOPs either way
    model = get_model(cfg.model.name, num_classes=classes, in_chans=chans, **model_options(cfg))
    model = model.to(memory_format=torch.channels_last).train()
    opt = build_optimizer(model, cfg.optim)
    x = torch.randn(batch, chans, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))

    def step() -> None:
        with autocast(device, precision):
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.optim.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flop = counter.get_total_flops()
    step_s = _median_s(step, args.steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    shares = _shares(prof)
    peak = conv_peak(batch, precision, device)
    achieved = flop / step_s / 1e12
    print(f"{hardware_class(device, precision)}; {cfg.model.name} {cfg.model.filters}, batch {batch} of "
          f"{chans}x{size}x{size}")
    print(f"step: {flop / 1e9:.1f} GFLOP in {step_s * 1e3:.0f} ms (median of {args.steps}) = {achieved:.3f} TFLOP/s; "
          f"3x3 conv peak {peak:.3f} TFLOP/s: {100 * achieved / peak:.0f}% of peak")
    print("self time: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))
    print(json.dumps({"model": cfg.model.name, "filters": cfg.model.filters, "precision": precision,
                      "batch": batch, "size": size, "gflop": round(flop / 1e9, 2), "step_ms": round(step_s * 1e3, 1),
                      "tflops": round(achieved, 4), "peak_tflops": round(peak, 4),
                      "shares": {k: round(v, 3) for k, v in shares.items()}}))
    if args.record:
        from results import hardware_name, record  # benchmarks/ is on sys.path when this script runs

        what = f"{cfg.model.name} {cfg.model.filters}, batch {batch} of {chans}x{size}x{size}"
        figures = [{"metric": "training step", "value": round(step_s * 1e3, 1), "unit": "ms", "n": args.steps,
                    "how": f"median of {args.steps} steps, {what}, {flop / 1e9:.1f} GFLOP"},
                   {"metric": "share of the 3x3 conv peak", "value": round(100 * achieved / peak, 1), "unit": "%",
                    "n": args.steps, "how": f"{achieved:.3f} of {peak:.3f} TFLOP/s"}]
        figures += [{"metric": f"self time: {k}", "value": round(100 * v, 1), "unit": "%", "n": 3,
                     "how": "torch.profiler over 3 steps"} for k, v in shares.items()]
        name = Path(args.recipe).stem + "".join(f"-{o}" for o in args.overrides)
        print(f"recorded: {record(__file__, name, figures, hardware=hardware_name(device, precision))}")


def _shares(prof) -> dict[str, float]:
    """Self CPU time per group of ops, as fractions of the whole."""
    by_group: dict[str, float] = {}
    for event in prof.key_averages():
        group = next((g for key, g in GROUPS.items() if key in event.key), "other")
        by_group[group] = by_group.get(group, 0.0) + event.self_cpu_time_total
    total = sum(by_group.values())
    return dict(sorted(((k, v / total) for k, v in by_group.items()), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    main()
