"""train.log_to: real runs logged to MLflow (a local SQLite store) and to W&B (offline), and read back
through each library; a tracker that fails mid-run, a package that is missing, a name that is wrong,
and a tuning study's trials nested and grouped."""

import json
import sys
from pathlib import Path

import pytest

from resnetlab.config import load_config
from resnetlab.errors import UserError
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from resnetlab.train.loop import StopTraining
from resnetlab.tune.study import run_study
from tests.conftest import tiny_config, tiny_overrides

# two epochs with a val split and the report: best.pt, curves.png, eval_test/ figures and report.html
LOGGED = ("data.val_fraction=0.25", "train.epochs=2", "train.report=true")


@pytest.fixture
def mlflow_client(tmp_path, monkeypatch):
    """An MLflow SQLite store in tmp_path; the working folder too, where the store keeps its artifacts."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    yield mlflow.MlflowClient(uri)
    assert mlflow.active_run() is None  # every run ended: the next one in this process starts clean


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    for name in ("WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)


def runs_of(client, experiment="resnetlab"):
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id], order_by=["start_time"])


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_mlflow_gets_the_config_every_epoch_the_test_metrics_and_the_files(class_folders, tmp_path, mlflow_client):
    s = prepare(tiny_config(class_folders, tmp_path / "runs", *LOGGED, "train.log_to=[mlflow]"), run_name="t")
    result = fit(s)
    (run,) = runs_of(mlflow_client)
    assert run.info.run_name == s.run_dir.name == "run" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["optim.lr"] == "0.05" and params["model.name"] == "resnet9" and params["train.epochs"] == "2"
    assert params["model.filters"] == "[8, 8, 16, 16]" and params["train.log_to"] == '["mlflow"]'
    for key in ("val_loss", "val_top1", "train_loss", "lr"):
        assert steps(mlflow_client, run.info.run_id, key) == [1, 2], key
    history = [json.loads(line) for line in (s.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m.value for m in sorted(mlflow_client.get_metric_history(run.info.run_id, "val_loss"),
                                    key=lambda m: m.step)] == pytest.approx([h["val_loss"] for h in history])
    assert run.data.metrics["test/top1"] == pytest.approx(result["test"]["top1"])
    assert run.data.metrics["best_val_top1"] == pytest.approx(max(h["val_top1"] for h in history))
    files = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "report.html", "best.pt", "eval_test"} <= files and "last.pt" not in files
    figures = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "eval_test")}
    assert "eval_test/confusion_normalized.png" in figures
    assert json.loads((s.run_dir / "trackers.json").read_text()) == {"mlflow": run.info.run_id}


def test_a_stopped_run_is_killed_and_its_resume_logs_on_in_the_same_mlflow_run(class_folders, tmp_path,
                                                                                mlflow_client):
    s = prepare(tiny_config(class_folders, tmp_path / "runs", "data.val_fraction=0.25", "train.log_to=[mlflow]"),
                run_name="t")

    def stop(session, record):
        raise StopTraining("enough for now")

    with pytest.raises(StopTraining):
        fit(s, callbacks={"on_epoch_end": [stop]})
    (run,) = runs_of(mlflow_client)
    assert run.info.status == "KILLED" and steps(mlflow_client, run.info.run_id, "val_loss") == [1]
    fit(prepare(None, run_name="", resume=s.run_dir, overrides=["train.eval_batch_size=8"]))
    (resumed,) = runs_of(mlflow_client)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert steps(mlflow_client, run.info.run_id, "val_loss") == [1, 2]
    assert resumed.data.params["train.eval_batch_size"] == "16"  # as the run began: MLflow keeps a param's value


def test_a_failing_tracker_costs_one_warning_not_the_run(class_folders, tmp_path, mlflow_client, monkeypatch, capsys):
    import mlflow

    calls = []

    def gone(*args, **kwargs):
        calls.append(kwargs.get("step"))
        raise ConnectionError("tracking server unreachable\nsecond line of the client's story")

    monkeypatch.setattr(mlflow, "log_metrics", gone)
    s = prepare(tiny_config(class_folders, tmp_path / "runs", "data.val_fraction=0.25", "train.log_to=[mlflow]"),
                run_name="t")
    result = fit(s)
    assert "test" in result and json.loads((s.run_dir / "status.json").read_text())["status"] == "finished"
    assert calls == [1]  # the first failure: then the tracker is no longer called
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["warning: MLflow logging failed (ConnectionError: tracking server unreachable); the run "
                        "goes on without MLflow"]
    (run,) = runs_of(mlflow_client)
    assert run.info.status == "FAILED"


def wandb_records(run: Path) -> list:
    """The records of an offline W&B run's .wandb file: a 7-byte header, then LevelDB log blocks of
    32 KiB whose records (4-byte checksum, 2-byte length, 1-byte type) carry protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, payload, out = next(run.glob("run-*.wandb")).read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        payload += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            out.append(record)
            payload = b""
        elif kind == 0:
            break
    return out


def wandb_history(records) -> dict[int, dict]:
    """{step: {key: value}} of the run's history records."""
    out = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): _history_value(i) for i in r.history.item}
            out.setdefault(r.history.step.num, {}).update(items)
    return out


def wandb_summary(records) -> dict:
    """The run's summary: its summary records' updates, in order."""
    out = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            out.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    return out


def _history_value(item):
    """A history item's value: JSON text (value_json), or one typed field (newer W&B)."""
    kind = item.WhichOneof("value")
    if kind is None:
        return json.loads(item.value_json)
    return json.loads(item.json) if kind == "json" else None if kind == "none" else getattr(item, kind)


def offline_run(run_dir: Path) -> Path:
    (run,) = (run_dir / "wandb").glob("offline-run-*")
    return run


def test_wandb_offline_holds_the_config_every_epoch_the_test_metrics_and_the_files(class_folders, tmp_path,
                                                                                   wandb_offline):
    s = prepare(tiny_config(class_folders, tmp_path / "runs", *LOGGED, "train.log_to=[wandb]"), run_name="t")
    result = fit(s)
    run = offline_run(s.run_dir)
    records = wandb_records(run)  # offline, W&B writes its summary and history only into the .wandb file
    summary = wandb_summary(records)
    assert summary["test/top1"] == pytest.approx(result["test"]["top1"]) and "best_val_top1" in summary
    history = [json.loads(line) for line in (s.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary["val_loss"] == pytest.approx(history[-1]["val_loss"])
    logged = wandb_history(records)
    assert sorted(k for k in logged if "val_loss" in logged[k]) == [1, 2]
    assert [logged[h["epoch"]]["val_loss"] for h in history] == pytest.approx([h["val_loss"] for h in history])
    assert (run / "files" / "curves.png").exists() and (run / "files" / "report.html").exists()
    assert (run / "files" / "eval_test" / "confusion_normalized.png").exists()
    (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"][:1]
    assert header.display_name == "run" and header.project == "resnetlab"
    config = {item.key: json.loads(item.value_json) for item in header.config.update}
    assert config["optim.lr"] == 0.05 and config["model.filters"] == [8, 8, 16, 16]
    models = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [(m.type, m.name) for m in models] == [("model", "run-model")]
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [0]
    assert json.loads((s.run_dir / "trackers.json").read_text()) == {"wandb": header.run_id}


@pytest.mark.parametrize("name, label", [("mlflow", "MLflow"), ("wandb", "W&B")])
def test_a_missing_package_is_one_line_before_the_run_folder_is_made(class_folders, tmp_path, monkeypatch, name,
                                                                     label):
    monkeypatch.setitem(sys.modules, name, None)  # what Python does for a package that is not installed
    cfg = tiny_config(class_folders, tmp_path / "runs", f"train.log_to=[{name}]")
    with pytest.raises(UserError) as e:
        prepare(cfg, run_name="t")
    assert str(e.value) == f"train.log_to=[{name}] needs {label}: pip install 'resnetlab[{name}]'"
    assert not (tmp_path / "runs").exists()


def test_log_to_names_only_the_trackers_it_knows():
    assert load_config(None, []).train.log_to == []
    assert load_config(None, ["train.log_to=mlflow,wandb"]).train.log_to == ["mlflow", "wandb"]
    with pytest.raises(UserError) as e:
        load_config(None, ["train.log_to=[wandb,mlfow]"])
    assert str(e.value) == ("train.log_to: 'mlfow' (command line) is not one of: mlflow, wandb; "
                            "did you mean 'mlflow'?")
    from resnetlab.config import Config, validate

    cfg = Config()
    cfg.train.log_to = ["tensorboard"]  # set in Python, past the command line's check
    with pytest.raises(UserError, match=r"^train.log_to: 'tensorboard' is not one of: mlflow, wandb$"):
        validate(cfg)


def test_a_studys_trials_nest_under_its_mlflow_run_and_group_in_wandb(class_folders, tmp_path, mlflow_client,
                                                                      wandb_offline):
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: log [0.01, 0.1]\ntrain.epochs: 1\n")
    overrides = [o for o in tiny_overrides(class_folders, tmp_path, "data.val_count=0", "data.val_fraction=0.25",
                                           "train.time_budget=", "data.image_size=16", "train.final_tta=1",
                                           "train.log_to=[mlflow,wandb]")
                 if not o.startswith(("train.name=", "train.out_dir="))]
    study_dir = tmp_path / "study"
    run_study("fashion-mnist-fast", overrides, trials=2, study_dir=study_dir, space=space, pruner="none")
    runs = runs_of(mlflow_client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_name for r in parents] == ["study"]
    trials = sorted((r for r in runs if r.info.run_id != parents[0].info.run_id), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in trials] == ["trial-000", "trial-001"]
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    for trial in ("trial-000", "trial-001"):
        records = wandb_records(offline_run(study_dir / "trials" / trial))
        (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"][:1]
        assert header.run_group == "study" and header.display_name == trial
