"""A folder of runs as a table: one row a run, read only from what each run folder holds.

A run's status comes from its status.json: finished, stopped (a signal, Ctrl+C, a pruned
trial) or failed (with the reason); 'running' is believed only while its process is alive
on this host, else the run died without a word (SIGKILL, out of memory) and counts as failed.
Folders written before status.json existed are 'finished' when they hold eval or last.pt.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from resnetlab import run_folder as rf
from resnetlab.errors import UserError
from resnetlab.evaluate.task import SingleLabel, Tasked, task_of_config
from resnetlab.io import read_json, read_yaml

SORT_KEYS = ("name", "recipe", "model", "dataset", "epochs", "best_val_top1", "test_top1", "best_val_map", "test_map",
             "seconds", "status")


@dataclass
class RunRow(Tasked):
    name: str
    path: str
    recipe: str
    model: str
    dataset: str
    epochs_done: int
    epochs_planned: int
    best_val_top1: float | None
    test_top1: float | None
    test_n: int | None
    seconds: float  # training time: the sum of the epochs' seconds
    status: str
    reason: str = ""
    # the run's task: a multi-label run scores macro mAP instead of top-1 (best epoch's val_map, test map_macro)
    task: SingleLabel = field(default_factory=SingleLabel)
    best_val_map: float | None = None
    test_map: float | None = None

    def to_dict(self) -> dict:
        """The row as JSON, its task as the config's yes-or-no says it, in the task's place."""
        return {k: v for key, value in asdict(self).items()
                for k, v in (self.task.config_entry() if key == "task" else {key: value}).items()}


def is_run(folder: Path) -> bool:
    return folder.is_dir() and (folder / rf.CONFIG).is_file() and (folder / rf.ENV).is_file()


def read_history(run: Path) -> list[dict]:
    path = run / rf.METRICS
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged ({e}); resume the run to rewrite it") from None


def run_status(run: Path) -> tuple[str, str]:
    """(status, reason) of one run folder."""
    path = run / rf.STATUS
    if not path.is_file():
        done = (run / rf.eval_name("test")).is_file() or (run / rf.LAST).is_file()
        return ("finished", "") if done else ("failed", "no checkpoint and no status.json")
    info = read_json(path)
    status = info.get("status", "failed")
    if status == "running" and not _alive(info.get("pid"), info.get("host")):
        return "failed", f"process {info.get('pid')} is gone (killed?); resume with --resume"
    return status, info.get("reason", "")


def _alive(pid, host) -> bool:
    if host != socket.gethostname():
        return True  # another machine's run (a shared runs/ folder): trust what it says
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def read_run(run: Path) -> RunRow:
    cfg, env = read_yaml(run / rf.CONFIG) or {}, read_json(run / rf.ENV)
    history = read_history(run)

    def best(key: str) -> float | None:
        values = [h[key] for h in history if h.get(key) is not None]
        return max(values) if values else None

    test = rf.read_optional_json(run, rf.eval_name("test"), {})
    status, reason = run_status(run)
    return RunRow(
        name=run.name, path=str(run), recipe=env.get("command", ""), model=cfg.get("model", {}).get("name", ""),
        dataset=str(cfg.get("data", {}).get("dataset", "")), epochs_done=len(history),
        epochs_planned=int(cfg.get("train", {}).get("epochs", 0)), best_val_top1=best("val_top1"),
        test_top1=test.get("top1"), test_n=test.get("n"), seconds=round(sum(h.get("seconds", 0) for h in history), 1),
        status=status, reason=reason, task=task_of_config(cfg),
        best_val_map=best("val_map"), test_map=test.get("map_macro"),
    )


def list_runs(folder: Path, *, sort: str = "name", descending: bool = False) -> list[RunRow]:
    """Every run folder directly in ``folder`` (and in a study's trials/), sorted by ``sort``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"runs folder {folder} does not exist: train something first, or give the folder "
                        "your runs are in (train.out_dir)")
    if sort not in SORT_KEYS:
        raise UserError(f"cannot sort by '{sort}': choose one of {', '.join(SORT_KEYS)}")
    candidates = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    studies = [folder, *candidates]  # a study folder keeps its trials' runs in trials/
    candidates += [p for c in studies if (c / "trials").is_dir() for p in sorted((c / "trials").iterdir())]
    rows = [read_run(p) for p in candidates if is_run(p)]
    if not rows:
        raise UserError(f"{folder} holds no run folders (a run folder has config.yaml and env.json)")
    field = {"epochs": "epochs_done"}.get(sort, sort)
    # runs without the figure (no val split, not tested yet) stay last in either direction
    known = sorted((r for r in rows if getattr(r, field) is not None), key=lambda r: getattr(r, field),
                   reverse=descending)
    return known + [r for r in rows if getattr(r, field) is None]
