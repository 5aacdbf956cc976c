"""Where and how the maths runs: device, precision, seeding, and the environment report (`resnetlab env`)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import random
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnetlab.errors import UserError


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device='{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device asks for CUDA but no CUDA GPU is visible; use train.device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device asks for MPS but it is not available here; use train.device=auto")
    return device


CPU_BF16_ENV = "RESNETLAB_CPU_BF16"


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor (augmentation draws, a batch read from disk) onto ``device`` without waiting for the
    GPU: a blocking copy would first drain every kernel queued (a stall a step). On CUDA it goes through
    pinned memory (PyTorch's caching host allocator, which keeps the block until the copy is done): from
    pageable memory CUDA stages the bytes itself, and that may wait on the stream. A no-op on the CPU."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()  # already pinned (a DataLoader's batch): the same tensor
    return t.to(device, non_blocking=True)


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 BF16: oneDNN then runs bf16 convolutions faster than fp32 (~1.5-2x on 2 EPYC
    cores). Without them bf16 is emulated, ~100x slower than fp32. RESNETLAB_CPU_BF16=0 (or 1)
    overrides the flags: to see what a CPU without bf16 does, or to keep fp32 on one that has it."""
    forced = _forced_cpu_bf16()
    if forced is not None:
        return forced == "1"
    return _cpu_flags_bf16()


def _cpu_flags_bf16() -> bool:
    """What /proc/cpuinfo says: AMX or AVX-512 BF16 (False where there is no /proc, e.g. macOS)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows ("" where neither says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _forced_cpu_bf16() -> str | None:
    """RESNETLAB_CPU_BF16 when it is set to 0 or 1, else None (the CPU's flags decide)."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    return forced if forced in ("0", "1") else None


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise UserError("train.precision=fp16 is for GPUs; on CPU use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def precision_reason(precision: str, requested: str, device: torch.device) -> str:
    """One line: which precision runs and why, e.g. for the start of a run and `resnetlab env`."""
    if requested != "auto":
        return f"{precision}: asked for with train.precision={requested}"
    if device.type == "cuda":
        return (f"{precision}: " + ("this GPU runs bf16 natively" if precision == "bf16"
                                    else "this GPU has no bf16, so fp16 with a gradient scaler"))
    if device.type != "cpu":
        return f"{precision}: the default on {device.type}"
    forced = _forced_cpu_bf16()
    if forced is not None:
        return f"{precision}: {CPU_BF16_ENV}={forced} says so"
    if precision == "bf16":
        return "bf16: this CPU has AVX-512 BF16 or AMX, where bf16 convolutions run ~2x faster than fp32"
    return "fp32: this CPU has no AVX-512 BF16 or AMX; bf16 would be emulated (~100x slower)"


def hardware_class(device: torch.device, precision: str) -> str:
    """The machine class a time budget plans for, in words: what sets a step's speed."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}, {precision}"
    if device.type != "cpu":
        return f"{device.type}, {precision}"
    has = _cpu_flags_bf16()
    kind = "with AVX-512 BF16/AMX" if has else "without AVX-512 BF16/AMX"
    forced = _forced_cpu_bf16()
    if forced is not None and (forced == "1") != has:
        kind += f", {CPU_BF16_ENV}={forced}"
    # the vector width sets a fp32 step's speed as much as bf16 does: ATen's kernels (AVX512, AVX2, ...;
    # ATEN_CPU_CAPABILITY lowers it) and oneDNN's convolutions (ONEDNN_MAX_CPU_ISA lowers those)
    isa = torch.backends.cpu.get_cpu_capability()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip()
    if onednn:
        isa += f", ONEDNN_MAX_CPU_ISA={onednn}"
    return f"CPU {kind} ({platform.machine()} {isa}, {torch.get_num_threads()} threads), {precision}"


def gemm_tflops(device: torch.device, precision: str, *, size: int = 512, seconds: float = 0.3) -> float:
    """A quick measured matrix-multiply rate (TFLOP/s, size^3 GEMMs) for `resnetlab env`: emulated bf16
    shows as ~1% of fp32. About ``seconds`` of timing after two warm-up products."""
    import time

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up: the first products pay for allocation and kernel choice
        a @ b
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        sync()
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start) / 1e12


def inference_precision(trained: str, device: torch.device) -> str:
    """The training precision where this device runs it, else this device's own default: a model
    trained in fp16 on a GPU predicts in bf16 or fp32 on a CPU instead of failing."""
    if trained == "fp16" and device.type != "cuda":
        return resolve_precision("auto", device)
    return resolve_precision(trained, device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot run here, or None. Checked before training, since the compiler only
    fails at the first step: inductor needs a C++ compiler on the CPU and Triton on a GPU."""
    import importlib.util
    import shutil

    dynamo = getattr(torch, "_dynamo", None)
    if dynamo is not None and hasattr(dynamo, "is_dynamo_supported") and not dynamo.is_dynamo_supported():
        return f"torch {torch.__version__} does not support torch.compile on Python {sys.version.split()[0]} here"
    if device.type == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        return "torch.compile needs a C++ compiler (g++) on the CPU and none is installed"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile needs Triton on a GPU and it is not installed (pip install triton)"
    if device.type not in ("cpu", "cuda"):
        return f"torch.compile is not supported on {device.type} here"
    return None


def compile_plan(mode: str, device: torch.device) -> tuple[bool, str | None]:
    """(compile or not, a note for the user) for train.compile = false / true / auto. Decided before
    the run folder exists, so a refused true leaves nothing behind."""
    if mode == "false":
        return False, None
    problem = compile_problem(device)
    if problem is None:
        return True, None
    if mode == "true":
        raise UserError(f"train.compile=true: {problem}; use train.compile=false, or auto to go on without it")
    return False, f"train.compile=auto: {problem}; training uncompiled"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def torchvision_version() -> str:
    """torchvision's version with its build tag ("0.29.1+cu130", as torch's has), read from its version.py:
    a run need not import torchvision, and the package metadata's version lacks the tag."""
    spec = importlib.util.find_spec("torchvision")
    text = Path(spec.origin).with_name("version.py").read_text() if spec and spec.origin else ""
    found = re.search(r"^__version__ = '([^']+)'", text, re.MULTILINE)
    return found.group(1) if found else version("torchvision")


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """Versions, hardware and threads: what a bug report needs."""
    import PIL

    from resnetlab import __version__

    info: dict[str, Any] = {
        "resnetlab": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.machine(),
        "torch": torch.__version__,
        "torchvision": torchvision_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cuda_available": torch.cuda.is_available(),
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if device is not None:
        info["device"] = str(device)
    return info
