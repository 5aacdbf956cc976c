"""An Optuna study over a recipe: every trial an ordinary run folder, the study in SQLite.

study folder/
  study.json    the recipe, overrides and search space it was made for (a resume must match)
  study.db      Optuna's RDB storage: `tune --study DIR` picks up where it stopped
  trials/       trial-000, trial-001, ...: run folders (`resnetlab runs DIR` lists them)
  best.yaml     the best trial's config, as a recipe `resnetlab train best.yaml` accepts
  study.html    best parameters, optimisation history, parameter importances, all trials
  compare.html  the top trials side by side

Trials are scored on validation top-1 (the best epoch); the test split is never looked at
(``train.final_test=false``). TPE proposes; a median or successive-halving pruner stops a
trial whose validation top-1 after an epoch is poor, through fit()'s on_epoch_end callback.
With ``train.log_to``, each trial's MLflow run nests under one for the study, and its W&B run is in the
group named after the study folder.
A trial killed mid-run (its state stays RUNNING in the database) is marked failed on the
next ``tune`` and queued again with the same parameters.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from rich.console import Console

from resnetlab.config import evolve, load_config, save_config
from resnetlab.data import plan_data
from resnetlab.errors import UserError
from resnetlab.evaluate.compare import build_compare
from resnetlab.evaluate.task import task_of_config
from resnetlab.io import read_json, write_json
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from resnetlab.run.trackers import check_trackers, study_run
from resnetlab.run_folder import read_run_config
from resnetlab.train.loop import StopTraining
from resnetlab.train.session import val_score
from resnetlab.tune.page import write_study_page
from resnetlab.tune.space import load_space, override, shown

STUDY_NAME = "resnetlab"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class Pruned(StopTraining, optuna.TrialPruned):
    """Ends a trial's run early (status.json: stopped) and tells Optuna it was pruned."""


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        # from the third trial on, stop a trial below the median of earlier ones at the same epoch;
        # not in the first third of the epochs, where a warm-up's low rate decides the ranking (a
        # 12-trial CIFAR study that pruned from epoch 1 stopped 10 trials there)
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=epochs // 3)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner '{name}': choose median, halving or none")


def open_study(study_dir: Path, identity: dict, *, seed: int, pruner: str, epochs: int) -> optuna.Study:
    """Create the study folder, or reopen it when it was made for the same recipe and space."""
    marker = study_dir / "study.json"
    if marker.is_file():
        made = read_json(marker)
        for key, what in (("recipe", "recipe"), ("overrides", "overrides"), ("space", "search space")):
            if made.get(key) != identity[key]:
                raise UserError(f"study folder {study_dir} was made for another {what} ({made.get(key)!r}, not "
                                f"{identity[key]!r}): give another --study, or the same {what}")
    elif study_dir.exists() and any(study_dir.iterdir()):
        raise UserError(f"{study_dir} exists and is not a resnetlab study folder: give another --study")
    else:
        study_dir.mkdir(parents=True, exist_ok=True)
        write_json(marker, identity)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=f"sqlite:///{study_dir / 'study.db'}", study_name=STUDY_NAME,
                               direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                               pruner=make_pruner(pruner, epochs), load_if_exists=True)


def retry_killed(study: optuna.Study, console: Console) -> None:
    """Trials left RUNNING by a killed process: mark them failed, and queue their parameters again."""
    storage = study._storage  # noqa: SLF001 - Optuna exposes no public handle on a study's storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "killed", True)  # noqa: SLF001
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        console.print(f"trial {trial.number} was killed while running: marked failed, queued again")


def run_study(recipe: str, overrides: list[str], *, trials: int, study_dir: Path, space: Path | None = None,
              pruner: str = "median", enqueue: list[dict] = (), console: Console | None = None) -> dict:
    """Run (or continue) a study until it holds ``trials`` finished (complete or pruned) trials."""
    console = console or Console(soft_wrap=True)
    if trials < 1:
        raise UserError(f"--trials {trials}: give 1 or more")
    base = load_config(recipe, overrides)
    check_trackers(base.train.log_to)  # before the study folder is made
    catalog, root, _ = plan_data(base)
    if "val" not in catalog.present_splits():
        raise UserError(f"tuning needs a validation split and {root} has none: add data.val_fraction=0.1 "
                        "(the test split is never looked at while tuning)")
    params, fixed, raw = load_space(space, base)
    study = open_study(study_dir, {"recipe": recipe, "overrides": list(overrides), "space": raw},
                       seed=base.seed, pruner=pruner, epochs=load_config(recipe, [*overrides, *fixed]).train.epochs)
    retry_killed(study, console)
    for values in enqueue:
        study.enqueue_trial(values)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    console.print(f"study {study_dir}: {done} of {trials} trials done; searching "
                  + ", ".join(f"{p.key} ({p.kind})" for p in params))

    def objective(trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in params}
        chosen = [override(k, v) for k, v in values.items()]
        cfg = load_config(recipe, [*overrides, *fixed, *chosen, f"train.out_dir={study_dir / 'trials'}",
                                   f"train.name=trial-{trial.number:03d}", "train.final_test=false",
                                   "train.report=false", "train.progress=false", "train.monitor=",
                                   "train.ladder=[]"])  # a rung would override the values the trial chose
        s = prepare(cfg, run_name=Path(recipe).stem)
        trial.set_user_attr("run_dir", str(s.run_dir))

        def report(session, record: dict) -> None:
            trial.report(val_score(record), record["epoch"])
            if trial.should_prune():
                raise Pruned(f"pruned by the {pruner} rule after epoch {record['epoch']}")

        started = time.perf_counter()
        fit(s, callbacks={"on_epoch_end": [report]}, console=Console(quiet=True))
        console.print(f"trial {trial.number}: val {s.task.score_name} {100 * s.state.best_score:.2f}% in "
                      f"{time.perf_counter() - started:.0f} s  {' '.join(shown(k, v) for k, v in values.items())}")
        return s.state.best_score

    def said(study_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.PRUNED:
            console.print(f"trial {trial.number}: pruned after epoch {trial.last_step} "
                          f"({' '.join(shown(k, v) for k, v in trial.params.items())})")

    if trials - done > 0:
        with study_run(base.train.log_to, study_dir):
            study.optimize(objective, n_trials=trials - done, catch=(UserError,), callbacks=[said])
    return finish_study(study, study_dir, console)


def finish_study(study: optuna.Study, study_dir: Path, console: Console) -> dict:
    """best.yaml, compare.html of the top trials and study.html."""
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    if not complete:
        raise UserError(f"no trial of {study_dir} completed (all pruned or failed): "
                        "widen the space or give more trials")
    best = complete[0]
    cfg = evolve(read_run_config(Path(best.user_attrs["run_dir"])), {"train.name": "", "train.out_dir": "runs",
                                                                      "train.final_test": True, "train.report": True})
    save_config(cfg, study_dir / "best.yaml")
    top = [Path(t.user_attrs["run_dir"]) for t in complete[:3]]
    compare = build_compare(top, study_dir / "compare.html")[0] if len(top) > 1 else None
    metric = f"val {task_of_config(cfg).score_name}"  # what every trial reported (val_score)
    page = write_study_page(study, study_dir, compare, metric)
    console.print(f"best: trial {best.number}, {metric} {100 * best.value:.2f}%: "
                  + " ".join(shown(k, v) for k, v in best.params.items()))
    console.print(f"wrote {study_dir / 'best.yaml'} (train it: resnetlab train {study_dir / 'best.yaml'}) and {page}")
    return {"best_trial": best.number, "best_value": best.value, "best_params": best.params,
            "recipe": str(study_dir / "best.yaml"), "page": str(page)}
