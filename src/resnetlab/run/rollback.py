"""`train --resume RUN --from-epoch N`: continue a run from its epoch_NNN.pt (train.keep_every), as the
Keras tutorials' ctrl+c method does: watch the curves, stop, go back to a chosen epoch, lower the rate.

The run then is the run that went from epoch N with the new settings. Everything the later epochs left
moves to rolled_back/epochs_<N+1>-<M>/ (their checkpoints, and the scores, calibration and report of
the model they ended with), so nothing written is lost and nothing of theirs is chosen or served; the
metrics are cut at epoch N. last.pt becomes epoch N's, and best.pt the best kept epoch up to N.
TensorBoard drops the later per-step events on resume; its per-epoch events keep the abandoned epochs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path

from resnetlab import run_folder as rf
from resnetlab.checkpoint import DamagedCheckpoint, load_checkpoint
from resnetlab.errors import UserError
from resnetlab.io import read_json
from resnetlab.run.resume import restore
from resnetlab.run_folder import write_metrics
from resnetlab.train import distributed
from resnetlab.train.session import Session, val_score
from resnetlab.train.stages import lr_for_step


def epoch_checkpoint(run_dir: Path, epoch: int) -> Path:
    """epoch_NNN.pt of ``run_dir``, or one line naming the epochs there are."""
    path = run_dir / rf.epoch_name(epoch)
    if not path.is_file():
        kept = _kept(run_dir)
        there = f"it keeps epochs {', '.join(map(str, kept))}" if kept else "it keeps none (set train.keep_every)"
        raise UserError(f"--from-epoch {epoch}: {run_dir} has no {path.name}; {there}")
    return path


def rolled_back_already(run_dir: Path, epoch: int) -> bool:
    """True when a torchrun restart repeats a --from-epoch that finished (env.json records it last)."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return False
    resumes = read_json(run_dir / rf.ENV).get("resumes", [])
    return bool(resumes) and resumes[-1].get("from_epoch") == epoch


def roll_back(s: Session, run_dir: Path, epoch: int) -> Session:
    """``s`` with epoch_NNN.pt restored (every rank); rank 0 moves the later epochs' files aside."""
    path = epoch_checkpoint(run_dir, epoch)
    s = restore(s, path, load_checkpoint(path))  # first: a checkpoint that does not fit the config changes nothing
    later = [p for p in run_dir.glob("*.pt") if p != path and _epoch_of(p) > epoch]
    # best.pt of a later epoch goes: the best kept epoch up to N replaces it, and sets the score to beat
    best = _best_kept(run_dir, s.state.history, epoch) if run_dir / rf.BEST in later else None
    if best is not None:
        s = dataclasses.replace(s, state=dataclasses.replace(s.state, best_score=val_score(s.state.history[best - 1])))
    metrics = run_dir / rf.METRICS
    last = max(len(metrics.read_text().splitlines()) if metrics.exists() else 0, epoch)
    moved = None
    distributed.barrier(s.dist)  # every rank has read the folder before rank 0 changes it
    if s.dist.main:
        moved = _move_aside(run_dir, later, epoch, last)
        shutil.copy2(path, run_dir / rf.LAST)  # a resume after a failure in the next epoch starts here
        if best is not None:
            shutil.copy2(run_dir / rf.epoch_name(best), run_dir / rf.BEST)
        write_metrics(run_dir, s.state.history)
    distributed.barrier(s.dist)
    old = s.state.history[-1]["lr"] if s.state.history else math.nan
    new = lr_for_step(s.cfg, epoch * s.steps_per_epoch, s.steps_per_epoch)
    where = f"epochs {epoch + 1}-{last} and what they wrote are in {moved}" if moved else "no later epochs to set aside"
    return dataclasses.replace(s, notes=s.notes + (f"rolled back to epoch {epoch} ({path.name}); {where}; lr "
                                                   f"{old:.2e} at epoch {epoch}, {new:.2e} from epoch {epoch + 1}",))


def _move_aside(run_dir: Path, later: list[Path], epoch: int, last: int) -> str | None:
    """Move the later epochs' checkpoints and the abandoned model's results to rolled_back/; copy the
    metrics as they were. Returns the folder, relative to the run, or None when nothing was later."""
    results = [p for pattern in rf.EVALUATED for p in run_dir.glob(pattern)]
    if not later and not results and last == epoch:
        return None
    aside = run_dir / "rolled_back" / f"epochs_{epoch + 1}-{last}"
    if aside.exists():  # rolled back over the same epochs before: keep both
        aside = aside.with_name(f"{aside.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    aside.mkdir(parents=True)
    for p in later + results:
        p.rename(aside / p.name)
    for name in (rf.METRICS, rf.METRICS_CSV, rf.CURVES):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, aside / name)
    return str(aside.relative_to(run_dir))


def _best_kept(run_dir: Path, history: list[dict], epoch: int) -> int | None:
    """The kept epoch (epoch_NNN.pt) up to ``epoch`` with the best val score; None without val scores."""
    scored = [(val_score(history[e - 1]), e) for e in _kept(run_dir) if e <= epoch and e <= len(history)]
    scored = [(v, e) for v, e in scored if not math.isnan(v)]
    return max(scored, key=lambda ve: (ve[0], -ve[1]))[1] if scored else None  # a tie: the earlier, as fit()


def _kept(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in run_dir.glob("epoch_*.pt"))


def _epoch_of(path: Path) -> float:
    """The epoch a checkpoint holds the end of (mid-epoch: the epoch it is in); a damaged one counts as later."""
    if path.name.startswith("epoch_"):
        return int(path.stem.split("_")[1])
    try:
        state = load_checkpoint(path)
    except DamagedCheckpoint:
        return math.inf
    return state["epoch"] + (1 if state["step_in_epoch"] else 0)
