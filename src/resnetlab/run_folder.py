"""The run folder's format: every file a run holds is named here, and written and read through here.

runs/<name>/
  config.yaml     resolved config (every default written out)
  env.json        versions, git commit, seed, device, precision; resumes appended
  classes.json    class names in index order
  data.json       size, channels, mean/std the model expects; data set root
  split.csv       every image used (key,label,split), reused on resume and by evaluate
  metrics.jsonl   one line an epoch (metrics.csv: the same table)
  untrained.json  the val scores of the model before its first step (train.score_untrained)
  status.json     running (pid, host), stopped, failed (why) or finished
  budget.json     train.time_budget's plan, and how the run kept to it
  calibration.json   temperature and rejection thresholds fitted on val
  thresholds.json    multi-label: each class's decision threshold (fitted on val to maximise F1)
  eval_<split>.json  a split's scores; eval_<split>/ its figures; confusion_<split>[_normalized].csv
  report.html     the one-page report
  tensorboard/    TensorBoard event files (train.tensorboard)
  trackers.json   the MLflow and W&B run ids of train.log_to, so a resume logs to the same runs
  wandb/          W&B's own files for the run (train.log_to=[wandb])
  curves.png      loss, accuracy and learning rate against epoch
  last.pt         the latest checkpoint (previous.pt: the one before); best.pt: the best epoch on val
  snapshot-K.pt   the end of the K-th SGDR cycle (stages with snapshots: true)
  epoch_NNN.pt    the checkpoint of epoch NNN, every train.keep_every epochs (--from-epoch rolls back to it)
  rolled_back/    what a --from-epoch resume moved aside: the later epochs' checkpoints and metrics
  skipped_images.csv   files left out by on_bad_image=skip

This module sits at the bottom of the package (it imports only config, io and errors), so training,
evaluation, deployment and the command line all read and write the folder through it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

from resnetlab.config import Config, config_from_dict, save_config
from resnetlab.errors import UserError
from resnetlab.io import atomic_write_text, csv_text, read_json, read_yaml

CONFIG, ENV, CLASSES, DATA, SPLIT = "config.yaml", "env.json", "classes.json", "data.json", "split.csv"
METRICS, METRICS_CSV, STATUS, BUDGET = "metrics.jsonl", "metrics.csv", "status.json", "budget.json"
CALIBRATION, REPORT, CURVES, TENSORBOARD = "calibration.json", "report.html", "curves.png", "tensorboard"
SKIPPED, THRESHOLDS, UNTRAINED = "skipped_images.csv", "thresholds.json", "untrained.json"
TRACKERS = "trackers.json"
LAST, BEST, PREVIOUS = "last.pt", "best.pt", "previous.pt"
SNAPSHOTS = "snapshot-*.pt"
# what scoring a run's final model wrote (finish, evaluate): a --from-epoch roll-back sets them aside
EVALUATED = (CALIBRATION, THRESHOLDS, REPORT, "eval_*", "confusion_*.csv")  # eval_*: the JSONs and folders
STATUSES = ("running", "stopped", "failed", "finished")


def epoch_name(epoch: int) -> str:
    """The checkpoint train.keep_every keeps at the end of ``epoch`` (1-based)."""
    return f"epoch_{epoch:03d}.pt"


def snapshot_name(k: int) -> str:
    """The K-th SGDR snapshot (1-based)."""
    return f"snapshot-{k}.pt"


def snapshot_paths(run: Path) -> list[Path]:
    """The run's snapshots in cycle order."""
    return sorted(Path(run).glob(SNAPSHOTS), key=lambda p: int(p.stem.split("-")[1]))


def eval_name(split: str) -> str:
    """A split's scores; ``eval_name(split)`` without '.json' is the folder of its figures."""
    return f"eval_{split}.json"


def eval_figures(run: Path, split: str) -> Path:
    """The folder of a split's figures (their names inside it are evaluate/figures.py's)."""
    return Path(run) / f"eval_{split}"


def confusion_csv(split: str, *, normalized: bool = False) -> str:
    return f"confusion_{split}{'_normalized' if normalized else ''}.csv"


def read_optional_json(run: Path, name: str, default=None):
    """The run's ``name`` parsed, or ``default`` when the run has none (a one-line error if damaged)."""
    path = Path(run) / name
    return read_json(path) if path.is_file() else default


def unique_run_dir(out_dir: Path, name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3... so an earlier run is never overwritten."""
    path, n = out_dir / name, 2
    while path.exists():
        path, n = out_dir / f"{name}-{n}", n + 1
    return path


def create_run_dir(out_dir: Path, name: str, files: dict[str, str], config: Config,
                   write: Callable[[Path], None] | None = None) -> Path:
    """Make the folder with its config.yaml, its first ``files`` and what ``write(folder)`` writes, in one
    rename, so no half-made run is ever listed."""
    final = unique_run_dir(out_dir, name)
    staging = out_dir / f".{final.name}.{time.time_ns()}.partial"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        save_config(config, staging / CONFIG)
        for filename, text in files.items():
            (staging / filename).write_text(text)
        if write is not None:
            write(staging)
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
    if not (run / CONFIG).is_file():
        raise UserError(f"{run} is not a resnetlab run folder (no config.yaml)")
    return run


def read_run_config(run: Path) -> Config:
    """The resolved config a run was trained with (or last resumed with)."""
    path = check_run_dir(run) / CONFIG
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path} does not hold a resnetlab config: restore it from the run's checkpoint or train again")
    return config_from_dict(raw)


def saved_split_file(run: Path) -> Path | None:
    """The run's split.csv (its images and their splits), or None for a run written without one."""
    path = Path(run) / SPLIT
    return path if path.is_file() else None


def find_checkpoint(run: Path, which: str = "best") -> Path:
    run = check_run_dir(run)
    for name in (which, "last", "best"):
        if (run / f"{name}.pt").is_file():
            return run / f"{name}.pt"
    raise UserError(f"{run} has no checkpoint yet: train it first (`resnetlab train --resume {run}`)")


def write_metrics(run: Path, history: list[dict]) -> None:
    """metrics.jsonl (one JSON record an epoch) and the same table as metrics.csv, for spreadsheets.
    Not fsynced (written every epoch end): a resume writes them again from the checkpoint's history."""
    atomic_write_text(run / METRICS, "".join(json.dumps(h) + "\n" for h in history), durable=False)
    columns = list(dict.fromkeys(key for h in history for key in h))
    atomic_write_text(run / METRICS_CSV, csv_text([columns] + [[h.get(c, "") for c in columns] for h in history]),
                      durable=False)


def write_status(run: Path, status: str, **details) -> None:
    """status.json: running (with pid and host, so a reader can tell a run that died), stopped,
    failed (with the one-line reason) or finished."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    info = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **details}
    if status == "running":
        info.update(pid=os.getpid(), host=socket.gethostname())
    atomic_write_text(run / STATUS, json.dumps(info, indent=2) + "\n")


def write_skipped(run: Path, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        atomic_write_text(run / SKIPPED, csv_text([["path", "reason"], *skipped]))
