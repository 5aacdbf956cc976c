"""Measured figures as data: a benchmark writes each measurement to benchmarks/results/ as one JSON file,
and the docs' figures page is generated from those files (never typed in by hand).

    from results import record      # in a benchmark script run as `python benchmarks/NAME.py`
    record("benchmarks/NAME.py", "what-was-measured", [{"metric": "test top-1", "value": 94.59,
           "unit": "%", "n": 10000, "how": "checkpoint chosen on val (n=5,000)"}])

A file holds the script, the measurement's name, the exact command, the commit (``-dirty`` when src/
had uncommitted changes, so the figure may not be the commit's), the hardware class the figure
belongs to (``CPU bf16``, ``CPU fp32``, ``GPU (<name>)``: what sets a step's speed), the machine in
words, the UTC date and the figures. Every figure needs ``metric``, ``value``, ``unit`` and ``n`` (the
images or runs it is measured over: a figure without its n cannot be weighed); other keys, such as
``how``, are kept as given. The file name is ``<script stem>-<name>-<hardware slug>-<date>.json``
(``-2``, ``-3``... after it when that day's file exists, so no measurement replaces another).

Importing this module is light (torch and resnetlab load only when the hardware must be found).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from resnetlab.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REQUIRED = ("metric", "value", "unit", "n")


def record(script: str, name: str, figures: list[dict], *, command: str | None = None, hardware: str | None = None,
           hardware_detail: str | None = None, out_dir: Path | None = None) -> Path:
    """Write one measurement's file to ``out_dir`` (default benchmarks/results/) atomically; returns its path.

    ``script``: the benchmark (a path, e.g. ``__file__``; stored relative to the repository);
    ``command``: default the real command line (``python`` + sys.argv); ``hardware``: default the
    class of this machine's default device (``hardware_name``); ``hardware_detail``: default the CPU
    model and core count, or the GPU's name. Raises ValueError for a figure without its four keys."""
    checked = [_check_figure(i, f) for i, f in enumerate(figures)]
    if not checked:
        raise ValueError("record() needs at least one figure")
    if not name or not _slug(name):
        raise ValueError(f"record() needs a measurement name with a letter or digit, got {name!r}")
    if hardware is None:
        hardware = default_hardware()
    result = {
        "script": _relative(script),
        "name": name,
        "command": command if command is not None else default_command(),
        "commit": git_commit(),
        "hardware": hardware,
        "hardware_detail": hardware_detail if hardware_detail is not None else machine_detail(hardware),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "figures": checked,
    }
    folder = Path(out_dir) if out_dir is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(script).stem}-{_slug(name)}-{_slug(hardware)}-{result['date']}"
    path, k = folder / f"{stem}.json", 2
    while path.exists():
        path, k = folder / f"{stem}-{k}.json", k + 1
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return path


def _check_figure(i: int, figure: dict) -> dict:
    """The figure with its four keys first, or a ValueError that names the figure and what it lacks."""
    if not isinstance(figure, dict):
        raise ValueError(f"figure {i} is a {type(figure).__name__}, not a dict with {', '.join(REQUIRED)}")
    label = f"figure {i} ({figure.get('metric', 'no metric')!r})"
    missing = [k for k in REQUIRED if figure.get(k) is None]
    if missing:
        raise ValueError(f"{label} has no {', '.join(missing)}: every figure needs {', '.join(REQUIRED)} "
                         "(n: how many images or runs it is measured over)")
    value, n = figure["value"], figure["n"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{label}: value must be a finite number, got {value!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{label}: n must be a whole number >= 1 (images or runs), got {n!r}")
    if not isinstance(figure["metric"], str) or not figure["metric"].strip():
        raise ValueError(f"{label}: metric must be a non-empty string")
    if not isinstance(figure["unit"], str):
        raise ValueError(f"{label}: unit must be a string (e.g. '%', 's', 'img/s')")
    return {**{k: figure[k] for k in REQUIRED}, **{k: v for k, v in figure.items() if k not in REQUIRED}}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def _relative(path: str | Path, *, from_cwd: bool = False) -> str:
    """A path inside the repository as 'benchmarks/x.py' (posix); any other as given. A relative path is
    taken as relative to the repository when it names a file there (and not ``from_cwd``, a command's
    argv[0]), else to the working folder."""
    p = Path(path)
    if not p.is_absolute() and not from_cwd and (REPO / p).exists():
        return p.as_posix()
    try:
        return p.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return p.as_posix()


def default_command() -> str:
    """This process's command line as typed from the repository root: ``python benchmarks/x.py ARGS``."""
    script = _relative(sys.argv[0], from_cwd=True) if sys.argv and sys.argv[0] else "-c"
    return shlex.join(["python", script, *sys.argv[1:]])


def git_commit() -> str:
    """``git rev-parse --short HEAD``, with ``-dirty`` when src/ has uncommitted (or untracked) changes;
    'unknown' outside a git checkout."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        status = git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if status.returncode != 0 or status.stdout.strip() else "")


def hardware_name(device, precision: str) -> str:
    """The hardware class a figure belongs to: 'GPU (<name>)' on CUDA; on a CPU 'CPU bf16' or 'CPU fp32'
    (the precision a run there trains in: resnetlab.device.resolve_precision / hardware_class), with the
    environment variables that lower the kernels' vector width (an emulated slower class) named."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    if device.type != "cpu":
        return f"{device.type} {precision}"
    lowered = [f"{k}={os.environ[k].strip()}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
               if os.environ.get(k, "").strip()]
    return f"CPU {precision}" + (f" ({', '.join(lowered)})" if lowered else "")


def default_hardware() -> str:
    """This machine's class for its default device (CUDA when there is one) and default precision."""
    import torch

    from resnetlab.device import resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return hardware_name(device, resolve_precision("auto", device))


def machine_detail(hardware: str = "") -> str:
    """The GPU's name for a GPU class, else the CPU's model name and the cores this process may use."""
    if hardware.startswith("GPU"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    from resnetlab.device import cpu_model  # imports torch: only when a figure is recorded

    model = cpu_model() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores"
