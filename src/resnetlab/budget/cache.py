"""The probe's timings kept on disk, so a second run of a recipe on the same machine plans at once.

One small JSON file a key, ``<cache_dir>/probe/<sha256 of the key>.json`` (cache_dir as the decoded
cache's: data.cache_dir, else $XDG_CACHE_HOME/resnetlab). The key is everything that sets a rung's
timings: the machine (CPU model, its bf16/AMX and vector class, cores and threads; the GPU's name,
capability and memory), the software (torch, torchvision, Python, resnetlab's version and a digest of
its source), the device, precision, processes and compile, the rung's config (every key but those that
only name, seed or lengthen the run) and the data as built (sizes of the splits, px, channels). The
file holds its key: a file whose key differs, or that cannot be read or parsed, is ignored and the
rung timed anew. A timing taken while other processes kept the CPUs busy is never written (plan.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from functools import cache
from importlib.metadata import version
from pathlib import Path

import torch

from resnetlab._version import __version__
from resnetlab.config import Config
from resnetlab.data import DataBundle
from resnetlab.data.decoded_cache import default_cache_dir
from resnetlab.device import cpu_model, hardware_class
from resnetlab.errors import UserError
from resnetlab.io import make_folder, write_json

FORMAT = 1  # of the file; a new one ignores the old files
FOLDER = "probe"
# keys that name, seed or lengthen a run, or rule the ladder: none changes a step's, an epoch end's or
# the test's seconds (the run's length is what the plan computes from them)
UNTIMED = {"seed", "train.out_dir", "train.name", "train.progress", "train.tensorboard", "train.log_to",
           "train.time_budget", "train.ladder", "train.ladder_min_epochs", "train.ladder_rung",
           "train.probe_cache", "train.epochs", "train.steps_per_epoch", "train.max_steps", "train.end_moves",
           "train.early_stop_patience", "train.early_stop_min_delta", "train.dist_timeout", "train.keep_every"}
MEASURED = ("step_s", "epoch_overhead_s", "finish_s", "infer_s", "finish_images", "full_steps", "timed_steps",
            "others_cpu")


def folder(cfg: Config) -> Path:
    return (Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()) / FOLDER


def key(cfg: Config, data: DataBundle, *, device: torch.device, precision: str, world: int, compiled: bool) -> dict:
    """What decides a rung's timings here (JSON: the file keeps it, and a lookup compares it whole)."""
    run = {k: v for k, v in _flat(cfg.to_dict()) if k not in UNTIMED}
    built = {"root": data.root, "px": data.image_size, "channels": data.channels, "classes": len(data.classes),
             "splits": {n: len(s) for n, s in data.splits.items()},
             "store": {n: type(s.images).__name__ for n, s in data.splits.items()}}  # memory, disk or streamed
    where = {"device": str(device), "precision": precision, "processes": world, "compile": compiled}
    return json.loads(json.dumps({"format": FORMAT, "machine": machine(device, precision), "software": software(),
                                  "run": where, "config": run, "data": built}, sort_keys=True, default=str))


def machine(device: torch.device, precision: str) -> dict:
    """The hardware: hardware_class() (bf16/AMX, vector ISA, threads; the GPU's name) and what it leaves out."""
    out = {"class": hardware_class(device, precision), "cpu": cpu_model(), "cpus": os.cpu_count(),
           "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory": p.total_memory,
                      "units": p.multi_processor_count, "cuda": torch.version.cuda,
                      "cudnn": torch.backends.cudnn.version()}
    return out


def software() -> dict:
    return {"torch": torch.__version__, "torchvision": version("torchvision"), "python": platform.python_version(),
            "resnetlab": __version__, "source": _source_digest()}


def lookup(path: Path, want: dict) -> tuple[dict | None, str]:
    """(the cached timings, "") when ``path`` holds them for ``want``; else (None, why not: "" when no
    run has stored them yet)."""
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return None, ""  # the first run of this key
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"its cache file was unreadable ({type(e).__name__})"
    try:
        if stored["key"] != want:
            return None, "its cache file was for another key"
        m = stored["measured"]
        got = {"step_s": {int(px): float(s) for px, s in m["step_s"].items()},
               "timed_steps": {int(px): int(n) for px, n in m["timed_steps"].items()},
               "epoch_overhead_s": float(m["epoch_overhead_s"]), "finish_s": float(m["finish_s"]),
               "infer_s": float(m["infer_s"]), "finish_images": int(m["finish_images"]),
               "full_steps": int(m["full_steps"]),
               "others_cpu": None if m["others_cpu"] is None else float(m["others_cpu"])}
    except (TypeError, KeyError, ValueError, AttributeError):
        return None, "its cache file was malformed"
    values = [*got["step_s"].values(), got["epoch_overhead_s"], got["finish_s"], got["infer_s"], got["finish_images"]]
    if not got["step_s"] or got["full_steps"] < 1 or not all(math.isfinite(v) and v >= 0 for v in values) \
            or min(got["step_s"].values()) <= 0:
        return None, "its cache file was malformed"
    return got, ""


def store(path: Path, key: dict, measured: dict) -> str:
    """Write the timings (atomically: a reader sees the old file or the new, never half of one); a cache
    that cannot be written costs the next run its timing, never this run: returns why, or ""."""
    try:
        make_folder(path.parent)
        write_json(path, {"key": key, "measured": {k: measured[k] for k in MEASURED},
                          "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except (UserError, OSError) as e:
        return f"not cached: {str(e).splitlines()[0]}"
    return ""


def file_for(cfg: Config, key: dict) -> Path:
    return folder(cfg) / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24] + ".json")


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and prefix == "":  # sections: data.*, train.*; ladder rungs and stages stay whole
            yield from _flat(v, f"{k}.")
        else:
            yield prefix + k, v


@cache
def _source_digest() -> str:
    """resnetlab's own code: a change to the step, the loader or the probe may change what they time."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]
