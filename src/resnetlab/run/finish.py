"""The end of a run, the same for ``fit()`` and ``resnetlab train``: one model, the test split
scored once, and the run folder completed.

The model is best.pt when the run has a validation split (chosen there, never on
training or test images), else last.pt. The test split is scored exactly once, here,
into eval_test.json; the temperature and rejection thresholds are fitted on val at
the same time (calibration.json), and with ``train.report`` the figures and
report.html are written too. ``--retrain-on-all`` then trains the same settings on
train + val (``retrain_config``).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from resnetlab import run_folder as rf
from resnetlab.config import Config, evolve
from resnetlab.data.readers.manifest import read_split_file
from resnetlab.errors import UserError
from resnetlab.evaluate.inference import Classifier
from resnetlab.evaluate.options import Options
from resnetlab.evaluate.report import build_report
from resnetlab.evaluate.trained import run_model, score_run
from resnetlab.io import read_json
from resnetlab.run_folder import read_run_config
from resnetlab.train.session import Session, smoke_splits


def final_model(s: Session) -> Classifier:
    """The run's model as a Classifier (evaluate/trained.py's rule: best.pt when chosen on val, else
    the last weights; EMA weights where kept), in the session's own module on its device."""
    return run_model(s.run_dir, device=s.device, decisions=False, model=s.model)


def finish_run(s: Session, console: Console) -> dict:
    """Score the test split once with the final model (rank 0), calibrate on val, write the report."""
    out = {"run_dir": str(s.run_dir)}
    if not s.dist.main:
        return out
    model = final_model(s)
    opts = Options(batch_size=s.cfg.train.eval_batch_size, figures=s.cfg.train.report, tta=s.cfg.train.final_tta,
                   views=s.cfg.train.final_tta_views,
                   thresholds_from=_parent_thresholds(s.cfg))
    scored = "test" if s.cfg.train.final_test and "test" in s.data.splits else None
    # a smoke test scores and calibrates on the images it validated on
    result = score_run(s.run_dir, model, smoke_splits(s.cfg, s.data.splits), opts, scored)
    if scored is None and model.threshold_source:  # predict, export and serve decide with these
        console.print(f"thresholds: {model.threshold_source}")
    if not s.cfg.train.final_test:
        console.print(f"done; the test split was not looked at (train.final_test=false); model {model.source}")
    elif result is None:
        console.print(f"done; no test split in this data set, so nothing was scored on test; model {model.source}")
    else:
        chosen = "chosen on val" if model.source.startswith(rf.BEST) else "no val split to choose on"
        for line in model.task.test_lines(result, f"{model.source}: {chosen}"):
            console.print(line)
        out["test"] = result
    if s.cfg.train.report and s.cfg.train.final_test:
        console.print(f"report: {build_report(s.run_dir)}")
    console.print(f"run folder: {s.run_dir}")
    return out


def _parent_thresholds(cfg: Config) -> Path | None:
    """A --retrain-on-all run's parent's thresholds.json (fitted on the val images this run trains on)."""
    return Path(cfg.data.split_file).parent / rf.THRESHOLDS if cfg.data.merge_val and cfg.data.split_file else None


def retrain_config(run: Path) -> Config:
    """The finished run's settings and images, with its validation images moved into training:
    the final model once the settings are chosen (the fastai GTSRB tutorial's last step)."""
    cfg = read_run_config(run)
    if not any(split == "val" for _, _, split in read_split_file(run / rf.SPLIT)):
        raise UserError(f"{run} has no validation split to add to training: --retrain-on-all needs one")
    changes = {"data.split_file": str(run / rf.SPLIT), "data.merge_val": True, "train.name": f"{run.name}-all"}
    # a time budget plans the retrain anew (train.max_steps too): the rise goes back to the recipe's pct_start
    if cfg.train.time_budget and (run / rf.BUDGET).exists() and read_json(run / rf.BUDGET).get("pinned_rise"):
        changes["schedule.warmup_epochs"] = 0.0
    return evolve(cfg, changes, source="--retrain-on-all")
