"""Staged fine-tuning: layer groups, freezing, discriminative rates, SGDR snapshots, resume across stages."""

import json
import math

import pytest
import torch

from resnetlab.config import load_config
from resnetlab.errors import UserError
from resnetlab.models import get_model
from resnetlab.models.groups import group_lr_scales, group_names
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from resnetlab.train.schedules import lr_at
from resnetlab.train.stages import lr_for_step, snapshot_epochs, stage_schedule
from tests.conftest import REPO, in_process, tiny_config, tiny_overrides
from tests.test_train import assert_same_weights, run_killed, weights

TUTORIAL = ("stages=[{epochs: 1, train: head, lr: [0.01], weight_decay: 0.0005, train_bn: false},"
            " {epochs: 1, train: layer3, lr: [0.001, 0.01]},"
            " {train: all, lr: [0.0001, 0.01], schedule: sgdr, cycle_len: 1, cycle_mult: 2, cycles: 2,"
            " snapshots: true}]")
# 32 px: the smallest a torchvision ResNet takes (layer4's stride-2 conv then sees 2x2)
RESNET18 = ("model.name=resnet18", "model.filters=null", "data.image_size=32")


def test_layer_groups_of_each_family():
    assert group_names(get_model("resnet34", num_classes=3)) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert group_names(get_model("preact_resnet56", num_classes=3, stages=[1, 1, 1])) == [
        "stem", "blocks", "final", "head"]
    assert group_names(get_model("resnet9", num_classes=3)) == ["features", "head"]
    assert group_lr_scales(3, [1e-4, 1e-2]) == pytest.approx([0.01, 0.1, 1.0])
    assert group_lr_scales(4, [0.5]) == [1.0] * 4


def test_stage_epochs_schedule_and_snapshots_are_exact():
    cfg = load_config(None, [TUTORIAL])
    assert [st.epochs for st in cfg.stages] == [1, 1, 3] and cfg.train.epochs == 5
    spe = 10
    # stage 3 (from epoch 2) is SGDR over its own 30 steps, at the head's top rate 0.01
    sched = stage_schedule(cfg, cfg.stages[2])
    for step in (20, 25, 29, 30, 49):
        want = lr_at(step - 20, base_lr=0.01, total_steps=30, steps_per_epoch=spe, cfg=sched)
        assert lr_for_step(cfg, step, spe) == want
    assert lr_for_step(cfg, 30, spe) == pytest.approx(0.01)  # a restart: cycle 2 begins at epoch 4
    assert lr_for_step(cfg, 0, spe) == 0.01  # stage 1, cosine from its top
    assert snapshot_epochs(cfg) == {3, 5}  # after cycle 1 (1 epoch) and cycle 2 (2 epochs)
    four = load_config(None, ["stages=[{epochs: 1, train: head}, {schedule: sgdr, cycles: 4, snapshots: true}]"])
    assert four.train.epochs == 16 and snapshot_epochs(four) == {2, 4, 8, 16}


def test_head_stage_freezes_the_body_and_bn_statistics(class_folders, tmp_path):
    cfg = tiny_config(class_folders, tmp_path, *RESNET18, "stages=[{epochs: 1, train: head, train_bn: false}]")
    session = prepare(cfg, run_name="t")
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    fit(session)
    after = session.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # BN running statistics included: they stay frozen


def test_train_bn_keeps_batchnorm_learning_in_frozen_groups(class_folders, tmp_path):
    cfg = tiny_config(class_folders, tmp_path, *RESNET18, "stages=[{epochs: 1, train: layer4}]")
    session = prepare(cfg, run_name="t")
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    fit(session)
    after = session.model.state_dict()
    assert torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert torch.equal(before["layer3.1.conv2.weight"], after["layer3.1.conv2.weight"])
    assert not torch.equal(before["bn1.weight"], after["bn1.weight"])
    assert not torch.equal(before["layer1.0.bn1.running_mean"], after["layer1.0.bn1.running_mean"])
    assert not torch.equal(before["layer4.1.conv2.weight"], after["layer4.1.conv2.weight"])


def test_discriminative_rates_reach_the_optimizer(class_folders, tmp_path):
    seen = {}

    def record(session, info):
        if info["step"] == 4:  # first step of stage 2: layer3, layer4, head at 1e-3 .. 1e-2
            seen.update({g["layer_group"]: g["lr"] for g in session.optimizer.param_groups if g["wd_scale"]})

    session = prepare(tiny_config(class_folders, tmp_path, *RESNET18, TUTORIAL), run_name="t")
    fit(session, callbacks={"on_batch_end": [record]})
    lr = lr_for_step(session.cfg, 4, 4)
    assert seen["head"] == pytest.approx(lr) and seen["layer3"] == pytest.approx(lr * 0.1)
    assert seen["layer4"] == pytest.approx(lr * math.sqrt(0.1))
    names = {p.name for p in session.run_dir.iterdir()}
    assert {"snapshot-1.pt", "snapshot-2.pt"} <= names
    history = [json.loads(line) for line in (session.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 5


def test_resume_inside_a_later_stage_equals_uninterrupted(class_folders, tmp_path, capsys):
    extra = (*RESNET18, TUTORIAL)
    full = prepare(tiny_config(class_folders, tmp_path / "full", *extra), run_name="f")
    fit(full)
    run_killed(5, tiny_overrides(class_folders, tmp_path / "killed", *extra), cwd=REPO)  # in stage 2
    run = tmp_path / "killed" / "run"
    proc = in_process(capsys, "train", "--resume", run)
    assert proc.returncode == 0, proc.stderr
    assert_same_weights(weights(full.run_dir), weights(run))
    assert_same_weights(weights(full.run_dir, "snapshot-1.pt"), weights(run, "snapshot-1.pt"))


def test_stage_errors(class_folders, tmp_path):
    with pytest.raises(UserError, match=r"stage train='layer9': this model has no layer group 'layer9'; its groups "
                                        r"are stem, layer1, layer2, layer3, layer4, head"):
        prepare(tiny_config(class_folders, tmp_path / "r", *RESNET18, "stages=[{epochs: 1, train: layer9}]"),
                run_name="t")
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match=r"resnet18 needs images of at least 32 px"):
        prepare(tiny_config(class_folders, tmp_path / "r", "model.name=resnet18", "model.filters=null"), run_name="t")
    with pytest.raises(UserError, match=r"stages\[0\].cycles needs schedule sgdr"):
        load_config(None, ["stages=[{cycles: 2}]"])
    with pytest.raises(UserError, match=r"must rise from the first group to the head"):
        load_config(None, ["stages=[{epochs: 1, lr: [0.1, 0.001]}]"])
    with pytest.raises(UserError, match=r"unknown field 'epoch'; did you mean 'epochs'"):
        load_config(None, ["stages=[{epoch: 1}]"])
