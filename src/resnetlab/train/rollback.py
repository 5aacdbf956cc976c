"""`train --resume RUN --from-epoch N`: continue a run from its epoch_NNN.pt (train.keep_every), as the
Keras tutorials' ctrl+c method does: watch the curves, stop, go back to a chosen epoch, lower the rate.

The run then is the run that went from epoch N with the new settings: its metrics, curves and
TensorBoard events end at epoch N (later ones are cut off), and every checkpoint of a later epoch
(last.pt, previous.pt, best.pt, epoch_NNN.pt, snapshots) moves to rolled_back/epochs_<N+1>-<M>/ with
the metrics as they were, so nothing written is lost and nothing of the abandoned epochs is chosen.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from resnetlab import run_folder as rf
from resnetlab.errors import UserError
from resnetlab.run_folder import write_metrics
from resnetlab.train.checkpoint import DamagedCheckpoint, load_checkpoint
from resnetlab.train.session import Session, restore
from resnetlab.train.stages import lr_for_step


def epoch_checkpoint(run_dir: Path, epoch: int) -> Path:
    """epoch_NNN.pt of ``run_dir``, or one line naming the epochs there are."""
    path = run_dir / rf.epoch_name(epoch)
    if not path.is_file():
        kept = sorted(int(p.stem.split("_")[1]) for p in run_dir.glob("epoch_*.pt"))
        there = f"it keeps epochs {', '.join(map(str, kept))}" if kept else "it keeps none (set train.keep_every)"
        raise UserError(f"--from-epoch {epoch}: {run_dir} has no {path.name}; {there}")
    return path


def roll_back(s: Session, run_dir: Path, epoch: int) -> None:
    """Restore epoch_NNN.pt into ``s``, move the later epochs' checkpoints aside and cut the metrics there."""
    path = epoch_checkpoint(run_dir, epoch)
    state = load_checkpoint(path)
    metrics = run_dir / rf.METRICS
    last = len(metrics.read_text().splitlines()) if metrics.exists() else epoch
    aside = run_dir / "rolled_back" / f"epochs_{epoch + 1}-{last}"
    if aside.exists():  # rolled back over the same epochs before: keep both
        aside = aside.with_name(f"{aside.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    later = [p for p in run_dir.glob("*.pt") if p != path and _epoch_of(p) > epoch]
    restore(s, path, state)  # first: a checkpoint that does not fit the config leaves the folder as it was
    if later or last > epoch:
        aside.mkdir(parents=True)
        for p in later:
            p.rename(aside / p.name)
        for name in (rf.METRICS, rf.METRICS_CSV, rf.CURVES):
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, aside / name)
    write_metrics(run_dir, s.state.history)
    old = s.state.history[-1]["lr"] if s.state.history else float("nan")
    new = lr_for_step(s.cfg, epoch * s.steps_per_epoch, s.steps_per_epoch)
    s.notes.append(f"rolled back to epoch {epoch} ({path.name}); epochs {epoch + 1}-{last} and their checkpoints "
                   f"are in {aside.relative_to(run_dir)}; lr {old:.2e} at epoch {epoch}, {new:.2e} from epoch "
                   f"{epoch + 1}")


def _epoch_of(path: Path) -> float:
    """The epoch a checkpoint holds the end of (mid-epoch: the epoch it is in); a damaged one counts as later."""
    if path.name.startswith("epoch_"):
        return int(path.stem.split("_")[1])
    try:
        state = load_checkpoint(path)
    except DamagedCheckpoint:
        return float("inf")
    return state["epoch"] + (1 if state["step_in_epoch"] else 0)
