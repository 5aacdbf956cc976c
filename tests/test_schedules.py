"""Schedules are pure functions of the step; where PyTorch has the same schedule, values match it."""

import math

import pytest
import torch

from resnetlab.config import ScheduleConfig
from resnetlab.train.schedules import lr_at, sgdr_cycle_ends

BASE, SPE, EPOCHS = 0.1, 10, 6
TOTAL = SPE * EPOCHS


def ours(cfg, total=TOTAL):
    return [lr_at(s, base_lr=BASE, total_steps=total, steps_per_epoch=SPE, cfg=cfg) for s in range(total)]


def torch_values(make, total=TOTAL):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    sched = make(opt)
    values = []
    for _ in range(total):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return values


@pytest.mark.parametrize(
    "cfg, make",
    [
        (ScheduleConfig(name="cosine"), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=TOTAL)),
        (ScheduleConfig(name="poly", power=1.0),
         lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=TOTAL, power=1.0)),
        (ScheduleConfig(name="poly", power=2.0),
         lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=TOTAL, power=2.0)),
        (ScheduleConfig(name="step", milestones=[2, 4], gamma=0.1),
         lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[20, 40], gamma=0.1)),
        (ScheduleConfig(name="sgdr", cycle_len=1, cycle_mult=2),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=SPE, T_mult=2)),
        (ScheduleConfig(name="sgdr", cycle_len=2, cycle_mult=1),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=2 * SPE, T_mult=1)),
        (ScheduleConfig(name="onecycle", pct_start=0.3, div_factor=25, final_div_factor=1e4),
         lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=BASE, total_steps=TOTAL, pct_start=0.3, div_factor=25,
                                                       final_div_factor=1e4)),
    ],
    ids=["cosine", "poly1", "poly2", "step", "sgdr-mult2", "sgdr-mult1", "onecycle"],
)
def test_matches_pytorch_step_by_step(cfg, make):
    assert ours(cfg) == pytest.approx(torch_values(make), rel=1e-9, abs=1e-12)


def test_linear_decay_exact_values():
    v = ours(ScheduleConfig(name="poly", power=1.0), total=4)
    assert v == pytest.approx([0.1, 0.075, 0.05, 0.025])


def test_warmup_then_cosine_exact_values():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=0.5)  # 5 steps of warm-up
    v = ours(cfg, total=15)
    assert v[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])
    assert v[5] == pytest.approx(0.1)
    assert v[10] == pytest.approx(0.1 * (1 + math.cos(math.pi * 5 / 10)) / 2)
    assert v[14] == pytest.approx(0.1 * (1 + math.cos(math.pi * 9 / 10)) / 2)


def test_min_lr_ratio_and_constant():
    cfg = ScheduleConfig(name="cosine", min_lr_ratio=0.1)
    assert ours(cfg)[0] == pytest.approx(BASE)
    assert min(ours(cfg)) >= 0.01 - 1e-12
    assert set(ours(ScheduleConfig(name="constant"))) == {BASE}


def test_sgdr_restarts_at_cycle_ends():
    cfg = ScheduleConfig(name="sgdr", cycle_len=1, cycle_mult=2)
    v = ours(cfg, total=70)
    assert sgdr_cycle_ends(70, SPE, cfg) == [10, 30, 70]
    for restart in (0, 10, 30):
        assert v[restart] == pytest.approx(BASE)
    assert v[9] < 0.01 and v[29] < 0.01


def test_onecycle_rise_in_epochs_is_pct_start_at_the_planned_length_and_free_of_the_length_before_its_end():
    from resnetlab.train.schedules import length_free_steps

    pinned = ScheduleConfig(name="onecycle", pct_start=0.25, warmup_epochs=0.25 * EPOCHS)  # what a time budget writes
    assert ours(pinned) == pytest.approx(ours(ScheduleConfig(name="onecycle", pct_start=0.25)), rel=1e-12, abs=0)
    free = length_free_steps(pinned, SPE)
    assert free == 15  # the rise: steps 0..14 of 1.5 epochs of 10 steps
    for total in (20, 37, 200):  # a corrected length keeps the rates of the rise, and only those
        values = ours(pinned, total)
        assert values[:free] == ours(pinned)[:free] and values[free + 1] != ours(pinned)[free + 1]
    # the rise is a share of the length
    assert length_free_steps(ScheduleConfig(name="onecycle", pct_start=0.25), SPE) == 0
    assert length_free_steps(ScheduleConfig(name="cosine", warmup_epochs=2), SPE) == 20
    assert length_free_steps(ScheduleConfig(name="cosine"), SPE) == 0
    assert length_free_steps(ScheduleConfig(name="step", milestones=[2]), SPE) == math.inf
