"""BatchNorm's training cost on this CPU by width: which layer widths a CPU ladder rung should avoid.

    .venv/bin/python benchmarks/batchnorm_widths.py [--batch 256] [--repeats 12]

For each (channels, side) that the recipes' ResNet-9 rungs put through a BatchNorm (the 28 px stem, the
14 px first stage, ...), times nn.BatchNorm2d's forward and backward in training mode, once on a
channels-last tensor (what resnetlab trains in) and once on a contiguous (NCHW) one, in fp32, the
median of --repeats. Also prints ns per element, which is flat where the kernel runs at memory speed.
Run it under ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` to see an AVX2-only CPU's kernels.
Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from resnetlab.device import hardware_class

# (channels, side px): the stems and stages of the Fashion-MNIST and CIFAR rungs, and the widths
# between them that are not multiples of 16
SHAPES = [(8, 28), (16, 28), (8, 14), (16, 14), (24, 14), (32, 14), (48, 14), (32, 7), (64, 7), (96, 7),
          (128, 3), (192, 3)]


def fwd_bwd_ms(channels: int, side: int, batch: int, repeats: int, channels_last: bool) -> float:
    bn = torch.nn.BatchNorm2d(channels)
    x = torch.randn(batch, channels, side, side)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad = torch.randn_like(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bn(x).backward(grad)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    print(f"{hardware_class(torch.device('cpu'), 'fp32')}; BatchNorm2d forward + backward, batch {args.batch}")
    rows = []
    for channels, side in SHAPES:
        n = args.batch * channels * side * side
        cl = fwd_bwd_ms(channels, side, args.batch, args.repeats, True)
        nchw = fwd_bwd_ms(channels, side, args.batch, args.repeats, False)
        rows.append({"channels": channels, "side": side, "channels_last_ms": round(cl, 2), "nchw_ms": round(nchw, 2)})
        print(f"{channels:4d} ch at {side:2d} px: channels-last {cl:6.2f} ms ({cl * 1e6 / n:4.1f} ns an element), "
              f"NCHW {nchw:6.2f} ms ({nchw * 1e6 / n:4.1f} ns)")
    print(json.dumps({"batch": args.batch, "rows": rows}))


if __name__ == "__main__":
    main()
