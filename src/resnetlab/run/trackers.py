"""MLflow and Weights & Biases for a run (``train.log_to=[mlflow,wandb]``), through fit()'s callbacks
(rank 0 only), each through its library's own API.

Each tracker gets the resolved config as params (flattened to ``section.key``), every epoch's record at
step = the epoch number (``val_loss``, ``val_top1``, ``train_loss``, ``lr``, ...), at the end the test
metrics (``test/top1``, ...) and ``best_val_top1``, and the run folder's curves.png, eval_test/ figures,
report.html and the chosen checkpoint (best.pt, else last.pt).

Where to: MLflow's tracking URI is ``$MLFLOW_TRACKING_URI`` (else MLflow's own default), its experiment
``$MLFLOW_EXPERIMENT_NAME`` (or ``_ID``), else ``resnetlab``. W&B's project is ``$WANDB_PROJECT``, else
``resnetlab``; its files go to the run folder's wandb/, and ``WANDB_MODE=offline`` and W&B's other
settings act as W&B reads them. Each tracker run is named after the run folder; the tracker run ids are
kept in trackers.json, so a resume logs on in the same runs. A tuning study's trials nest under an
MLflow run for the study and form a W&B group named after it (``study_run``).

A tracker is a guest of the run: the first call that fails (a server gone, the client's exception) costs
one warning line and that tracker is not called again; the run goes on. The packages are optional
extras, imported only when a run asks for them; a missing one is a one-line error before the run
folder is made (``check_trackers``).
"""

from __future__ import annotations

import contextlib
import contextvars
import glob
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from resnetlab import run_folder as rf
from resnetlab.config import section_items
from resnetlab.errors import UserError
from resnetlab.io import write_json
from resnetlab.train.loop import Preempted, StopTraining
from resnetlab.train.session import Session, run_config, val_score

PROJECT = "resnetlab"  # the MLflow experiment and the W&B project when the environment names none
NAMES = {"mlflow": "MLflow", "wandb": "W&B"}  # train.log_to's choices, as the messages call them
MAX_PARAM = 6000  # characters MLflow keeps of a param value (it refuses a longer one)
POSITION = ("epoch", "step")  # an epoch record's place: the step axis, not a metric
STOPPED = (Preempted, StopTraining, KeyboardInterrupt)  # a run stopped on purpose (resumable), not failed
# the tuning study whose trial trains now (study_run): the W&B group of its runs
STUDY: contextvars.ContextVar[str] = contextvars.ContextVar("resnetlab_study", default="")


def check_trackers(log_to: list[str]) -> None:
    """A tracker whose package is not installed: one line, before anything is trained or written."""
    for name in log_to:
        if not _installed(name):
            raise UserError(f"train.log_to=[{name}] needs {NAMES[name]}: pip install 'resnetlab[{name}]'")


def _installed(module: str) -> bool:
    """Found without importing it (importing MLflow or W&B takes seconds, paid only by a run that logs)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # imported already, without a spec: it is there
        return True


def epoch_metrics(record: dict) -> dict[str, float]:
    """An epoch record's numbers (the losses and scores, lr, images/s, seconds)."""
    return {k: float(v) for k, v in record.items()
            if k not in POSITION and isinstance(v, (int, float)) and not isinstance(v, bool)}


def final_metrics(s: Session, result: dict) -> dict[str, float]:
    """The best val score of the run and the test split's headline figures, when scored."""
    out = {f"best_{s.task.val_score_key}": max((val_score(h) for h in s.state.history), default=float("nan"))}
    test = result.get("test") or {}
    out.update({f"test/{key}": float(test[key]) for key in s.task.test_keys if isinstance(test.get(key), (int, float))})
    return {k: v for k, v in out.items() if v == v}  # NaN: no val split to score on


def artifacts(run: Path) -> list[Path]:
    """What the run keeps to show, inside the run folder: figures, the report, the chosen checkpoint."""
    figures = sorted(p for p in rf.eval_figures(run, "test").glob("*") if p.is_file())
    checkpoint = run / (rf.BEST if (run / rf.BEST).is_file() else rf.LAST)
    return [p for p in (run / rf.CURVES, *figures, run / rf.REPORT, checkpoint) if p.is_file()]


class Tracker:
    """One tracker's calls; ``guarded`` runs them until the first failure, after which none is made."""

    key = ""

    def __init__(self):
        self.broken = False

    def guarded(self, what: str, fn, *args) -> Any:
        if self.broken:
            return None
        try:
            return fn(*args)
        except Exception as e:  # whatever the client raises, the run goes on
            self.broken = True
            first = (str(e).strip().splitlines() or [""])[0][:200]
            print(f"warning: {NAMES[self.key]} {what} failed ({type(e).__name__}: {first}); the run goes on "
                  f"without {NAMES[self.key]}", file=sys.stderr, flush=True)
            return None


class MLflowTracker(Tracker):
    key = "mlflow"

    def __init__(self):
        super().__init__()
        self.run_id = None

    def start(self, s: Session, run_id: str | None) -> str:
        import mlflow

        parent = mlflow.active_run()  # a study's run (or the caller's own): this run nests under it
        if run_id is None:
            experiment = parent.info.experiment_id if parent else _experiment(mlflow)
            run = mlflow.start_run(experiment_id=experiment, run_name=s.run_dir.name, nested=parent is not None,
                                   tags={"resnetlab.run_dir": str(s.run_dir.resolve())})
            logged = {}
        else:  # a resume: the same MLflow run; a param once logged cannot change, so only new keys are added
            run = mlflow.start_run(run_id=run_id, nested=parent is not None)
            logged = mlflow.get_run(run_id).data.params
        self.run_id = run.info.run_id
        params = {k: _param_text(v) for k, v in dict(section_items(run_config(s))).items() if k not in logged}
        mlflow.log_params(params, run_id=self.run_id)
        return self.run_id

    def epoch(self, step: int, metrics: dict) -> None:
        import mlflow

        mlflow.log_metrics(metrics, step=step, run_id=self.run_id)

    def final(self, s: Session, step: int, metrics: dict, files: list[Path]) -> None:
        import mlflow

        mlflow.log_metrics(metrics, step=step, run_id=self.run_id)
        for path in files:
            folder = path.parent.relative_to(s.run_dir).as_posix()
            mlflow.log_artifact(str(path), artifact_path=None if folder == "." else folder, run_id=self.run_id)

    def end(self, status: str) -> None:
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status=status)
        else:  # something else became the active run: leave it be
            mlflow.MlflowClient().set_terminated(self.run_id, status)

    def abandon(self) -> None:
        """After a failure: take the run off MLflow's stack of active runs (so the next run in this process,
        a tuning trial, starts clean), asking the server once, briefly, to mark it failed."""
        import mlflow

        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            return
        with _env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5"), \
                contextlib.suppress(Exception):
            mlflow.end_run(status="FAILED")  # pops the stack before it calls the server

    def start_study(self, name: str, folder: Path) -> None:
        import mlflow

        run = mlflow.start_run(experiment_id=_experiment(mlflow), run_name=name, nested=mlflow.active_run() is not None,
                               tags={"resnetlab.study": str(folder.resolve())})
        self.run_id = run.info.run_id


def _experiment(mlflow) -> str | None:
    """None where the environment names the experiment (MLflow reads it), else the 'resnetlab' one."""
    if os.environ.get("MLFLOW_EXPERIMENT_NAME") or os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return None
    return mlflow.set_experiment(PROJECT).experiment_id


def _param_text(value: Any) -> str:
    """A param as config.yaml writes it (true, null, [16, 32]), cut to what MLflow keeps."""
    return (value if isinstance(value, str) else json.dumps(value))[:MAX_PARAM]


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WandbTracker(Tracker):
    key = "wandb"

    def __init__(self):
        super().__init__()
        self.run = None

    def start(self, s: Session, run_id: str | None) -> str:
        import wandb

        # create_new: never log into (or finish) a W&B run the caller has open
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=s.run_dir.name,
                              config=dict(section_items(run_config(s))), dir=str(s.run_dir), group=STUDY.get() or None,
                              id=run_id, resume="allow" if run_id else None, allow_val_change=bool(run_id),
                              reinit="create_new")
        return self.run.id

    def epoch(self, step: int, metrics: dict) -> None:
        self.run.log(metrics, step=step)

    def final(self, s: Session, step: int, metrics: dict, files: list[Path]) -> None:
        import wandb

        self.run.summary.update(metrics)
        for path in files:
            if path.suffix == ".pt":  # the model: a versioned artifact, as W&B keeps models
                model = wandb.Artifact(re.sub(r"[^\w.-]", "-", f"{s.run_dir.name}-model"), type="model")
                model.add_file(str(path))
                self.run.log_artifact(model)
            else:
                self.run.save(glob.escape(str(path)), base_path=str(s.run_dir), policy="now")

    def end(self, status: str) -> None:
        self.run.finish(exit_code=1 if status == "FAILED" else 0)

    def abandon(self) -> None:
        """After a failure: one quiet try to close the run, so the next run in this process starts clean."""
        if self.run is not None:
            with contextlib.suppress(Exception):
                self.run.finish(exit_code=1)


TRACKERS = {"mlflow": MLflowTracker, "wandb": WandbTracker}


def _status(error: BaseException | None) -> str:
    """MLflow's name for how the run ended (W&B's exit code follows it)."""
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, STOPPED) else "FAILED"


def _close(tracker: Tracker, status: str) -> None:
    if tracker.broken:
        tracker.abandon()
    else:
        tracker.guarded("end of run", tracker.end, status)


@contextlib.contextmanager
def tracking(s: Session) -> Iterator[dict]:
    """The trackers' runs for this run, open while it trains: yields fit() callbacks; on the way out each
    tracker run ends as finished, killed (a stop: the run can resume) or failed."""
    names = list(dict.fromkeys(s.cfg.train.log_to)) if s.dist.main else []
    if not names:
        yield {}
        return
    check_trackers(names)
    ids = rf.read_optional_json(s.run_dir, rf.TRACKERS, {})
    trackers = [TRACKERS[name]() for name in names]
    for t in trackers:
        run_id = t.guarded("start", t.start, s, ids.get(t.key))
        if run_id is not None and run_id != ids.get(t.key):
            ids[t.key] = run_id
            write_json(s.run_dir / rf.TRACKERS, ids)

    def on_epoch_end(session: Session, record: dict) -> None:
        metrics = epoch_metrics(record)
        for t in trackers:
            t.guarded("logging", t.epoch, record["epoch"], metrics)

    def on_train_end(session: Session, result: dict) -> None:
        metrics, files = final_metrics(session, result), artifacts(session.run_dir)
        for t in trackers:
            t.guarded("upload of the results", t.final, session, len(session.state.history), metrics, files)

    error = None
    try:
        yield {"on_epoch_end": [on_epoch_end], "on_train_end": [on_train_end]}
    except BaseException as e:
        error = e
        raise
    finally:
        for t in trackers:
            _close(t, _status(error))


@contextlib.contextmanager
def study_run(log_to: list[str], folder: Path) -> Iterator[None]:
    """A tuning study's trials, run inside: with MLflow each trial's run nests under one for the study
    (named after its folder); with W&B they are a group of that name (W&B does not nest runs)."""
    name = folder.resolve().name
    parent = MLflowTracker() if "mlflow" in log_to else None
    if parent is not None:
        check_trackers(["mlflow"])
        parent.guarded("start of the study's run", parent.start_study, name, folder)
    token, error = STUDY.set(name), None
    try:
        yield
    except BaseException as e:
        error = e
        raise
    finally:
        STUDY.reset(token)
        if parent is not None and parent.run_id is not None:
            _close(parent, _status(error))
