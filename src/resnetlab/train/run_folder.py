"""The run folder: what every run writes, and reading it back for resume, evaluate and predict.

runs/<name>/
  config.yaml     resolved config (every default written out)
  env.json        versions, git commit, seed, device, precision; resumes appended
  classes.json    class names in index order
  data.json       size, channels, mean/std the model expects; data set root
  split.csv       every image used (key,label,split), reused on resume and by evaluate
  metrics.jsonl   one line an epoch (metrics.csv: the same table)
  status.json     running (pid, host), stopped, failed (why) or finished
  tensorboard/    TensorBoard event files (train.tensorboard)
  curves.png      loss, accuracy and learning rate against epoch
  last.pt         the latest checkpoint; best.pt: the best epoch on val (only with a val split)
  skipped_images.csv   files left out by on_bad_image=skip
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from resnetlab.io import atomic_write_text, csv_text, read_yaml
from resnetlab.config import Config, config_from_dict
from resnetlab.errors import UserError


def unique_run_dir(out_dir: Path, name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3... so an earlier run is never overwritten."""
    path, n = out_dir / name, 2
    while path.exists():
        path, n = out_dir / f"{name}-{n}", n + 1
    return path


def create_run_dir(out_dir: Path, name: str, files: dict[str, str]) -> Path:
    """Make the folder with its first files in one rename, so no half-made run is ever listed."""
    final = unique_run_dir(out_dir, name)
    staging = out_dir / f".{final.name}.{time.time_ns()}.partial"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        for filename, text in files.items():
            (staging / filename).write_text(text)
        staging.rename(final)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"cannot create the run folder {final} ({e.strerror or e}): choose a writable "
                        "train.out_dir with free space") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def check_run_dir(run: Path) -> Path:
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist")
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a resnetlab run folder (no config.yaml)")
    return run


def read_run_config(run: Path) -> Config:
    """The resolved config a run was trained with (or last resumed with)."""
    path = check_run_dir(run) / "config.yaml"
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path} does not hold a resnetlab config: restore it from the run's checkpoint or train again")
    return config_from_dict(raw)


def saved_split_file(run: Path) -> Path | None:
    """The run's split.csv (its images and their splits), or None for a run written without one."""
    path = Path(run) / "split.csv"
    return path if path.is_file() else None


def find_checkpoint(run: Path, which: str = "best") -> Path:
    run = check_run_dir(run)
    for name in (which, "last", "best"):
        if (run / f"{name}.pt").is_file():
            return run / f"{name}.pt"
    raise UserError(f"{run} has no checkpoint yet: train it first (`resnetlab train --resume {run}`)")


def write_metrics(run: Path, history: list[dict]) -> None:
    """metrics.jsonl (one JSON record an epoch) and the same table as metrics.csv, for spreadsheets."""
    atomic_write_text(run / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    columns = list(dict.fromkeys(key for h in history for key in h))
    atomic_write_text(run / "metrics.csv", csv_text([columns] + [[h.get(c, "") for c in columns] for h in history]))


def write_status(run: Path, status: str, **details) -> None:
    """status.json: running (with pid and host, so a reader can tell a run that died), stopped,
    failed (with the one-line reason) or finished."""
    info = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **details}
    if status == "running":
        info.update(pid=os.getpid(), host=socket.gethostname())
    atomic_write_text(run / "status.json", json.dumps(info, indent=2) + "\n")


def write_skipped(run: Path, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        atomic_write_text(run / "skipped_images.csv", csv_text([["path", "reason"], *skipped]))
