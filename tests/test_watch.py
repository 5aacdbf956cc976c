"""Runs you can watch, list and compare: TensorBoard events, metrics.csv, status, `runs`, `compare`."""

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch

from resnetlab.cli import main
from resnetlab.errors import UserError
from resnetlab.evaluate.runs import list_runs
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from tests.conftest import REPO, tiny_config, tiny_overrides, write_class_folders


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs on the same tiny data (different rates), with val, test and the report."""
    tmp = tmp_path_factory.mktemp("watch")
    data = write_class_folders(tmp / "data", per_class=16, size=16)
    out = tmp / "runs"
    for name, lr in (("slow", "0.01"), ("fast", "0.05")):
        args = tiny_overrides(data, out, "data.val_fraction=0.25", "train.report=true", f"optim.lr={lr}",
                              f"train.name={name}")
        assert main(["train", *args]) == 0
    return data, out


def test_tensorboard_events_hold_the_expected_tags(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = runs
    events = EventAccumulator(str(out / "fast" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    expected = {"step/loss", "step/lr", "epoch/train_loss", "epoch/train_top1", "epoch/val_loss", "epoch/val_top1",
                "epoch/val_top5", "epoch/images_per_s", "epoch/lr", "test/top1", "test/macro_f1"}
    assert expected <= set(tags["scalars"])
    assert {"test/confusion_normalized", "test/top_losses"} <= set(tags["images"])
    assert events.PluginTagToContent("hparams")  # the config as hyper-parameters, with the final metrics
    history = [json.loads(line) for line in (out / "fast" / "metrics.jsonl").read_text().splitlines()]
    top1 = events.Scalars("epoch/val_top1")
    assert [e.step for e in top1] == [1, 2]
    assert [e.value for e in top1] == pytest.approx([h["val_top1"] for h in history])
    assert len(events.Scalars("step/loss")) == 2 * 4  # 36 train images, batch 8: 4 steps (the short tail joins)
    rows = list(csv.DictReader((out / "fast" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["val_top1"]) == pytest.approx(history[1]["val_top1"])


def test_tensorboard_can_be_turned_off(class_folders, tmp_path):
    s = prepare(tiny_config(class_folders, tmp_path, "train.epochs=1", "train.tensorboard=false"), run_name="t")
    fit(s)
    assert not (s.run_dir / "tensorboard").exists() and (s.run_dir / "metrics.csv").is_file()


KILLED = """
import os, signal, sys
from resnetlab.config import load_config
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare

def die(session, info):
    if info["step"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)

fit(prepare(load_config(None, sys.argv[1:]), run_name="k"), callbacks={"on_batch_end": [die]})
"""


def test_runs_lists_finished_stopped_failed_and_killed_runs(class_folders, tmp_path, capsys):
    out = tmp_path / "runs"
    fit(prepare(tiny_config(class_folders, out, "train.name=done"), run_name="t"))

    def interrupt(session, info):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(prepare(tiny_config(class_folders, out, "train.name=stopped"), run_name="t"),
            callbacks={"on_batch_end": [interrupt]})

    def poison(session, info):
        with torch.no_grad():
            session.model.fc.weight.fill_(float("nan"))

    with pytest.raises(UserError):
        fit(prepare(tiny_config(class_folders, out, "train.name=broken"), run_name="t"),
            callbacks={"on_batch_end": [poison]})
    proc = subprocess.run([sys.executable, "-c", KILLED, *tiny_overrides(class_folders, out, "train.name=killed")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    rows = {r.name: r for r in list_runs(out)}
    assert {n: r.status for n, r in rows.items()} == {"done": "finished", "stopped": "stopped", "broken": "failed",
                                                      "killed": "failed"}
    assert "loss became NaN" in rows["broken"].reason and "is gone" in rows["killed"].reason
    assert rows["done"].epochs_done == 2 and rows["done"].epochs_planned == 2 and rows["done"].test_top1 is not None
    capsys.readouterr()  # the training lines so far
    assert main(["runs", str(out), "--sort", "status", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in listed] == ["failed", "failed", "finished", "stopped"]
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["runs", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"resnetlab runs: error: runs folder {tmp_path / 'nowhere'} does not exist")
    assert err[1] == (f"resnetlab runs: error: {tmp_path / 'empty'} holds no run folders "
                      "(a run folder has config.yaml and env.json)")


def test_compare_page_in_headless_chromium(runs, tmp_path, capsys):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium)")
    _, out = runs
    page = tmp_path / "compare.html"
    assert main(["compare", str(out / "slow"), str(out / "fast"), "--out", str(page)]) == 0
    text = page.read_text()
    assert "http://" not in text and "https://" not in text
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and [line for line in proc.stderr.splitlines() if ":CONSOLE" in line] == []
    dom = proc.stdout
    assert 'data-rendered="yes"' in dom and '<img alt="training curves" src="data:image/png;base64,' in dom
    for section in ("curves", "metrics", "config", "classes"):
        assert f'id="{section}"' in dom, section
    assert "<td>optim.lr</td><td>0.01</td><td>0.05</td>" in dom and "train.name" not in dom
    assert "test top-1" in dom and "(n=12)" in dom and "within binomial noise" in dom  # 12 images decide nothing


def test_compare_warns_when_classes_differ_and_needs_two_runs(runs, tmp_path, capsys):
    data, out = runs
    args = tiny_overrides(data, tmp_path, "data.classes=ant,bee", "train.name=two", "train.epochs=1")
    assert main(["train", *args]) == 0
    assert main(["compare", str(out / "fast"), str(tmp_path / "two"), "--out", str(tmp_path / "c.html")]) == 0
    assert "warning: two has other classes than fast (2 vs 3)" in capsys.readouterr().err
    assert main(["compare", str(out / "fast")]) == 2
    assert main(["compare", str(out / "fast"), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["resnetlab compare: error: compare needs two runs or more",
                   f"resnetlab compare: error: {tmp_path} is not a resnetlab run folder (no config.yaml and env.json)"]

