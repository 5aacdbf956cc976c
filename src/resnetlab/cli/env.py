"""`resnetlab env`: versions, device and threads, to paste into a bug report."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("env", help="versions, device and threads (for bug reports)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from resnetlab.device import environment, gemm_tflops, precision_reason, resolve_precision, select_device

    device = select_device("auto")
    precision = resolve_precision("auto", device)
    candidates = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    info = {**environment(device), "default_precision": precision,
            "precision_reason": precision_reason(precision, "auto", device),
            # measured here and now: emulated bf16 shows as ~1% of fp32
            "gemm_tflops": {p: round(gemm_tflops(device, p), 4) for p in candidates}}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:<18} {value}")
    return 0
