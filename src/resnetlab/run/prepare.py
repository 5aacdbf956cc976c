"""prepare(): config + data + hardware -> plan -> Session, and only then the run folder.

The order matters for "no half-written run folder": data and model are built and checked, and the
time budget has chosen its ladder rung and the run's length, before the folder is created; a budget
too small for one epoch stops the run with nothing written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from resnetlab import run_folder as rf
from resnetlab.config import Config, apply_overrides, save_config, validate, yield_to_command_line
from resnetlab.data import DataBundle, build_data
from resnetlab.data.readers.manifest import split_file_text
from resnetlab.device import (
    compile_plan,
    environment,
    precision_reason,
    resolve_precision,
    seed_everything,
    select_device,
)
from resnetlab.errors import UserError
from resnetlab.evaluate.task import TASK_KEY, task_of_config
from resnetlab.io import read_json, write_json
from resnetlab.run.resume import RESUME_FROM, restore_newest_intact
from resnetlab.run.rollback import epoch_checkpoint, roll_back, rolled_back_already
from resnetlab.run.trackers import check_trackers
from resnetlab.run_folder import check_run_dir, create_run_dir, read_run_config, saved_split_file
from resnetlab.train import distributed
from resnetlab.train.distributed import Dist
from resnetlab.train.session import Session, build_session


def prepare(cfg: Config | None, *, run_name: str, resume: Path | None = None, overrides: list[str] = (),
            from_epoch: int | None = None, started: float | None = None) -> Session:
    """Build data, model and optimiser; create the run folder (or reopen it to resume).

    With ``resume`` the config comes from the run folder (``cfg`` is ignored) and
    ``overrides`` are applied on top and recorded in env.json. When torchrun restarts the
    processes (``--max-restarts``), the run it had begun is resumed from its last checkpoint.
    With train.time_budget, the plan (rung and length) is made here and kept in the folder's
    config.yaml and budget.json, so a resume follows it. ``from_epoch`` resumes from the run's
    epoch_NNN.pt instead of its last checkpoint (run/rollback.py). ``started`` (``time.monotonic()``)
    is where a time budget's clock starts, the command's start for the CLI; by default, now.
    """
    started, restarted, resume_notes = time.monotonic() if started is None else started, None, []
    if resume is None and (restarted := elastic_restart(cfg, run_name)) is not None:
        resume, overrides = restarted, []
    if from_epoch is not None and resume is not None and rolled_back_already(resume, from_epoch):
        from_epoch = None  # torchrun restarted the processes of a finished roll-back: go on from its checkpoints
    if resume is not None:
        resume = check_run_dir(resume)
        if from_epoch is not None:
            epoch_checkpoint(resume, from_epoch)  # before anything is built: a missing epoch is one line
        cfg = read_run_config(resume).thawed()
        trained = task_of_config(cfg)
        # the run's plan (time budget, stages) never replaces a key given now: it steps aside and says so
        resume_notes = yield_to_command_line(cfg, set(apply_overrides(cfg, overrides)))
        if task_of_config(cfg).name != trained.name:  # the head, the loss and every record would change meaning
            raise UserError(f"{resume} was trained {trained.kind}: a resume cannot change {TASK_KEY}; start a new run")
        cfg = validate(cfg)
    d = distributed.from_environment()
    if d.main:  # only rank 0 logs to MLflow and W&B: a missing package is one line before anything is built
        check_trackers(cfg.train.log_to)
    if d.world > cfg.train.batch_size:
        raise UserError(f"{d.world} processes cannot share a global batch of {cfg.train.batch_size}: "
                        "raise train.batch_size or start fewer processes")
    device = distributed.init(d, select_device(cfg.train.device), timeout_s=cfg.train.dist_timeout)
    precision = resolve_precision(cfg.train.precision, device)
    if device.type == "cuda":  # training shapes are static (merged tail batch): let cuDNN time its algorithms once
        torch.backends.cudnn.benchmark = True
    compile_wanted, compile_note = compile_plan(cfg.train.compile, device)
    seed_everything(cfg.seed)
    data = build_data(cfg, split_file=saved_split_file(resume) if resume else None, progress=cfg.train.progress,
                      builder=d.local_rank == 0)  # one process a machine builds the decoded cache
    if len(data.splits["train"]) < 1:
        raise UserError("the training split is empty")
    plan = None
    if cfg.train.time_budget and resume is None:  # the budget's code is imported only by a run that has one
        from resnetlab.budget.plan import Hardware, plan_budget
        from resnetlab.checkpoint import rng_state, set_rng_state

        rng = rng_state()  # the probes' model inits draw from it: the run starts where a fixed run would
        cfg, data, plan = plan_budget(cfg, data, Hardware(device, precision, d, compile_wanted), started=started)
        set_rng_state(rng)
    has_checkpoint = resume is not None and (from_epoch is not None
                                             or any((resume / n).exists() for n in RESUME_FROM))
    session = build_session(cfg, data, device=device, precision=precision, dist=d, compile_wanted=compile_wanted,
                            pretrained=not has_checkpoint, started=started)
    notes = ([compile_note] if compile_note else []) + resume_notes
    if resume is not None and cfg.train.time_budget and (resume / rf.BUDGET).exists():
        notes.append(f"time budget: resuming the plan in {resume / rf.BUDGET} ({cfg.train.epochs} epochs); "
                     "the time before the interruption is not counted again")
    if resume is None:  # rank 0 names and creates the folder; the others learn its name
        folder = distributed.broadcast_object(_new_run(cfg, data, run_name, device, precision, d, plan)
                                              if d.main else None, d)
        return replace(session, run_dir=folder, plan=plan, notes=tuple(notes))
    session = replace(session, run_dir=resume)
    if from_epoch is not None:
        session = roll_back(session, resume, from_epoch)
    elif has_checkpoint:
        session = restore_newest_intact(session, resume)  # before touching the folder: a misfit changes nothing
    if d.main:
        env = read_json(resume / rf.ENV)
        env.setdefault("resumes", []).append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "overrides": list(overrides),
                                              **({"from_epoch": from_epoch} if from_epoch is not None else {}),
                                              **({"torchrun_restart": int(os.environ["TORCHELASTIC_RESTART_COUNT"])}
                                                 if restarted else {})})
        write_json(resume / rf.ENV, env)
        save_config(cfg, resume / rf.CONFIG)
    return replace(session, notes=session.notes + tuple(notes))


def default_run_name(cfg: Config, run_name: str) -> str:
    """train.name, else the recipe and the time; under torchrun the recipe and its run id instead, which
    every rank and every restart of the same torchrun agree on (with --standalone, a fresh id each time)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if cfg.train.name:
        return cfg.train.name
    return f"{run_name}-{run_id[:8]}" if run_id != "none" else f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def elastic_restart(cfg: Config, run_name: str) -> Path | None:
    """The run folder to resume when torchrun has restarted this process group after a failure
    (TORCHELASTIC_RESTART_COUNT > 0) and the run it began has a checkpoint; else None."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    run = Path(cfg.train.out_dir) / default_run_name(cfg, run_name)
    if not any((run / n).exists() for n in RESUME_FROM):
        return None
    if os.environ.get("RANK", "0") == "0":
        print(f"torchrun restart {os.environ['TORCHELASTIC_RESTART_COUNT']}: resuming {run} from its last checkpoint",
              file=sys.stderr, flush=True)
    return run


def _new_run(cfg: Config, data: DataBundle, run_name: str, device: torch.device, precision: str, dist: Dist,
             plan) -> Path:
    name = default_run_name(cfg, run_name)
    env = {**environment(device), "seed": cfg.seed, "precision": precision,
           "precision_reason": precision_reason(precision, cfg.train.precision, device), "command": run_name,
           "world_size": dist.world}
    data_info = {**data.preprocess(), "root": data.root, "cached": data.cached, "resize": cfg.data.resize,
                 "sizes": {k: len(v) for k, v in data.splits.items()}, "class_ids": data.catalog.class_ids,
                 "counts": data.counts(), "notes": data.notes}
    files = {
        rf.ENV: json.dumps(env, indent=2) + "\n",
        rf.CLASSES: json.dumps(data.classes, indent=2) + "\n",
        rf.DATA: json.dumps(data_info, indent=2) + "\n",
        rf.SPLIT: split_file_text(data.catalog),
    }
    if plan is None:
        return create_run_dir(Path(cfg.train.out_dir), name, files, cfg)
    from resnetlab.budget.plan import write_plan

    return create_run_dir(Path(cfg.train.out_dir), name, files, cfg, write=lambda folder: write_plan(folder, plan))

