"""Resuming a run: the newest intact checkpoint's weights, optimiser and training state put into a
freshly built session (which they must fit: the same model, classes and optimiser)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from resnetlab import run_folder as rf
from resnetlab.checkpoint import DamagedCheckpoint, describe_model, load_checkpoint, load_model_state, set_rng_state
from resnetlab.errors import UserError
from resnetlab.train.session import Session, TrainState, model_options

RESUME_FROM = (rf.LAST, rf.PREVIOUS)  # newest first: previous.pt is the last.pt before it


def restore_newest_intact(s: Session, run_dir: Path) -> Session:
    """Resume from last.pt, or from previous.pt when last.pt is damaged or missing (and say so)."""
    damaged = []
    for name in RESUME_FROM:
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
        except DamagedCheckpoint as e:
            damaged.append(str(e))
            continue
        note = () if not damaged else (f"{damaged[0]}; resuming from {name} instead (epoch {state['epoch']}, "
                                        f"step {state['step_in_epoch']}): the steps after it are trained again",)
        s = restore(s, path, state)
        return replace(s, notes=s.notes + note)
    raise UserError(f"no intact checkpoint in {run_dir} to resume from: {'; '.join(damaged)}")


def restore(s: Session, path: Path, state: dict | None = None) -> Session:
    """The session with the checkpoint's weights, optimiser state and training state (the config's
    optimiser settings win over the saved ones: overrides given on resume)."""
    state = state if state is not None else load_checkpoint(path)
    expected = describe_model(s.cfg.model.name, model_options(s.cfg), len(s.data.classes))
    load_model_state(s.model, state, path=path, expected=expected)
    try:
        s.optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise UserError(f"optimiser state in {path} does not fit optim.name={s.cfg.optim.name}: {e}") from None
    if s.scaler and state.get("scaler"):
        s.scaler.load_state_dict(state["scaler"])
    if s.ema is not None and state.get("ema"):
        s.ema.load_state_dict(state["ema"])
    # load_state_dict brought back the saved hyperparameters; overrides given on resume win
    o = s.cfg.optim
    for group in s.optimizer.param_groups:
        group["weight_decay"] = o.weight_decay * group["wd_scale"]
        if "momentum" in group:
            group["momentum"], group["nesterov"] = o.momentum, o.nesterov and o.momentum > 0
        if "betas" in group:
            group["betas"] = tuple(o.betas)
    set_rng_state(state["rng"])
    return replace(s, state=TrainState.from_checkpoint(state))
