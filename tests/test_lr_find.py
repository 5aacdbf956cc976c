"""The LR range test: exponential sweep, early stop on divergence, model and optimiser restored."""

import json

import pytest
import torch

from resnetlab.cli import main
from resnetlab.run.prepare import prepare
from resnetlab.train.lr_find import lr_find, suggest
from tests.conftest import tiny_config, tiny_overrides


def test_sweep_restores_model_and_optimizer(class_folders, tmp_path):
    session = prepare(tiny_config(class_folders, tmp_path), run_name="t")
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    optim_before = session.optimizer.state_dict()
    result = lr_find(session, start=1e-4, end=1e-1, steps=12)
    assert len(result.lr) == 12 and not result.stopped_early
    assert result.lr[0] == pytest.approx(1e-4) and result.lr[-1] == pytest.approx(1e-1)
    assert result.lr[6] / result.lr[5] == pytest.approx(1000 ** (1 / 11))  # a constant ratio a step
    for k, v in session.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert session.optimizer.state_dict()["state"] == optim_before["state"] == {}
    assert (result.suggested_lr, result.rule, result.min_loss_lr) == suggest(result.lr, result.smoothed)
    # the steepest fall lies in the sweep; the fallback (no falling part) is a tenth of the minimum's lr
    assert result.lr[0] / 10 <= result.suggested_lr <= result.lr[-1]


def test_sweep_stops_when_the_loss_diverges(class_folders, tmp_path):
    session = prepare(tiny_config(class_folders, tmp_path), run_name="t")
    result = lr_find(session, start=1e-3, end=1e6, steps=60)
    assert result.stopped_early and len(result.lr) < 60


def test_suggestion_rule():
    lrs = [10 ** (-6 + i * 0.1) for i in range(50)]
    smoothed = [3.0] * 10 + [3.0 - 0.05 * i for i in range(20)] + [2.0, 1.6, 1.0, 0.7, 0.6] + [1.0] * 15
    lr, rule, at_min = suggest(lrs, smoothed)
    # the steepest fall (central differences), not the long gentle one
    assert lr == lrs[31] and "steepest descent" in rule
    assert at_min == lrs[34]


def test_cli_writes_plot_and_points(class_folders, tmp_path, capsys):
    args = tiny_overrides(class_folders, tmp_path)
    assert main(["lr-find", *args, "--steps", "15", "--start", "1e-4", "--end", "1"]) == 0
    run = tmp_path / "run"
    points = json.loads((run / "lr_find.json").read_text())
    assert len(points["lr"]) == len(points["loss"]) == len(points["smoothed"]) <= 15
    assert (run / "lr_find.png").stat().st_size > 0
    assert "suggested lr" in capsys.readouterr().out


def test_inverted_range_is_one_line(class_folders, tmp_path, capsys):
    assert main(["lr-find", *tiny_overrides(class_folders, tmp_path), "--start", "1", "--end", "1e-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["resnetlab lr-find: error: the sweep must rise: --start 1 must be positive and below --end 0.001"]
    assert not (tmp_path / "run").exists()
