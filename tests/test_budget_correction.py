"""The time budget corrects the run's length once, from its own clock, and stays the fixed run of the
length it chose."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
import yaml

from resnetlab.budget import correction
from resnetlab.budget.correction import MARGIN, LengthCorrection, corrected_steps, finish_estimate
from resnetlab.budget.plan import Plan
from resnetlab.checkpoint import load_checkpoint
from resnetlab.config import Config, load_config
from resnetlab.errors import UserError
from resnetlab.run.finish import retrain_config
from resnetlab.run.fit import fit
from resnetlab.run.prepare import prepare
from resnetlab.train.stages import laid_position
from tests.conftest import tiny_config

K = 100  # steps an epoch


def plan(**changes) -> Plan:
    # 10 epochs of 100 steps at 0.1 s, 1 s to validate and save each, 5 s for the test and report
    values = dict(budget_s=300.0, used_s=10.0, step_s={28: 0.1}, epoch_overhead_s=1.0, finish_s=5.0, epochs=10,
                  steps=K, full_steps=K, predicted_s=125.0)
    return Plan(**{**values, **changes})


@pytest.mark.parametrize("epochs, budget_s, done, pace", [
    (10, 300.0, 250, 1.25),  # 2.5 epochs in, 25% slower than timed: ends in a later epoch
    (1, 22.0, 25, 1.0),  # a one-epoch run at its timed pace, little time left: ends in the epoch under way
    (1, 35.0, 25, 1.0),  # ... with time to spare: into a second epoch
])
def test_the_corrected_end_is_the_last_step_that_fits_at_the_pace_measured(epochs, budget_s, done, pace):
    p = plan(epochs=epochs, budget_s=budget_s)
    ends_done, end_s = (done - 1) // K, 1.5  # epoch ends behind the run; each took 1.5 s (1 s planned)
    elapsed = p.used_s + 2.0 + pace * done * 0.1 + ends_done * end_s  # 2 s to build the run after the plan
    got = corrected_steps(p, elapsed=elapsed, done=done, k=K, pace=pace, end_s=end_s, sizes=lambda e: [28] * e)

    def end_at(t):  # an independent count: steps and epoch ends still to come, at the measured pace
        return elapsed + pace * (t - done) * 0.1 + (math.ceil(t / K) - ends_done) * end_s + p.finish_s

    fits = [t for t in range(done + 1, 20_000) if end_at(t) - elapsed <= MARGIN * (p.budget_s - elapsed)]
    assert max(fits) % K == 0 or max(fits) % K * pace * 0.1 >= end_s  # no last epoch shorter than its end (below)
    assert got["max_steps"] == max(fits) and got["predicted_s"] == pytest.approx(end_at(max(fits)), abs=0.01)
    said = f"after {done} steps the run's steps are at {pace:.2f}x the pace it timed, an epoch end 1.5 s: " \
           f"{epochs * K} -> {max(fits)} steps"
    assert said in got["line"]
    slow = corrected_steps(p, elapsed=budget_s - 1, done=done, k=K, pace=pace, end_s=end_s, sizes=lambda e: [28] * e)
    assert slow["max_steps"] == done + 1  # out of time: the schedule still gets its last step


@pytest.mark.parametrize("budget_s, fits, kept", [(135.0, 1005, 1000), (136.5, 1020, 1020)])
def test_a_last_epoch_shorter_than_its_own_end_is_left_off(budget_s, fits, kept):
    """10 whole epochs and ``fits`` - 1000 steps fit; 5 steps (0.5 s) train for less than an epoch end
    (1.5 s) takes, so the run ends after epoch 10; 20 steps (2 s) are kept."""
    p, done, end_s = plan(budget_s=budget_s), 250, 1.5
    elapsed = p.used_s + 2.0 + done * 0.1 + 2 * end_s
    end_at = elapsed + (fits - done) * 0.1 + (math.ceil(fits / K) - 2) * end_s + p.finish_s
    assert end_at - elapsed <= MARGIN * (budget_s - elapsed) < end_at - elapsed + 0.1  # the budget's arithmetic
    got = corrected_steps(p, elapsed=elapsed, done=done, k=K, pace=1.0, end_s=end_s, sizes=lambda e: [28] * e)
    assert got["max_steps"] == kept


def test_the_pace_is_timed_on_steps_inside_epochs_and_epoch_ends_apart():
    p = plan(epochs=4, steps=10, full_steps=10, correct_at=35)
    correction = LengthCorrection(SimpleNamespace(plan=p, steps_per_epoch=10, cfg=Config(),
                                                  data=SimpleNamespace(image_size=28)))
    now = 0.0
    # 0.11 s a step (0.1 planned); 5 s before the first 3 and 3 s for the first epoch end (one-off costs,
    # off the clock), then 1.5 s an epoch end
    for step in range(30):
        now += 0.11 + {0: 5.0, 10: 3.0, 20: 1.5}.get(step, 0.0)
        assert correction.step_done(step, now) is None
    pace, end_s = correction.measured()
    assert pace == pytest.approx(1.1) and end_s == pytest.approx(1.5)
    one = LengthCorrection(SimpleNamespace(plan=plan(epochs=40, steps=1, full_steps=1, correct_at=20),
                                           steps_per_epoch=1, cfg=Config(), data=SimpleNamespace(image_size=28)))
    for step in range(19):  # epochs of one step: every gap holds an epoch end (0.1 s planned + 1 s): one factor
        one.step_done(step, 1.21 * (step + 1))
    assert one.measured() == pytest.approx((1.1, 1.1))


def test_a_length_that_would_resize_epochs_already_trained_is_kept():
    def sizes(epochs):  # progressive resizing: 16 px for the first half of the run, then 28
        return [16 if e < epochs // 2 else 28 for e in range(epochs)]

    p = plan(step_s={16: 0.05, 28: 0.1})
    # 7x slower: ~5.6 epochs, 28 px from epoch 4
    got = corrected_steps(p, elapsed=200.0, done=450, k=K, pace=7.0, end_s=1.0, sizes=sizes)
    assert got["max_steps"] is None
    assert "stays at 1000 steps (a new length would resize epochs already trained)" in got["line"]


def steps_at_pace(monkeypatch, s, before: float, after: float) -> None:
    """The corrections' clock, driven by the steps: each takes ``before`` x its planned s until the first correction,
    then ``after`` x (epoch ends take no extra time), so what they decide does not depend on this machine's load."""
    step_s, at = s.plan.step_s[max(s.plan.step_s)], s.plan.correct_at
    ticks = {"now": s.clock.started + s.plan.used_s, "calls": 0}

    def clock() -> float:  # call 0 starts the clock; call n + 1 ends step n
        ticks["now"] += step_s * (before if ticks["calls"] <= at else after)
        ticks["calls"] += 1
        return ticks["now"]

    monkeypatch.setattr(correction, "monotonic", clock)


# steps 3x slower than timed, then 2x faster with airbench's lookahead, whose averaging grows with the share of the
# run done. The fast run's budget is half: the fake clock charges nothing for an epoch's end, so a fast run trains
# ~4x its planned epochs (each ~50 ms of real time here)
@pytest.mark.parametrize("pace, averaging, budget", [(3.0, (), "8s"),
                                                     (1 / 2, ("train.ema_decay=0.9", "train.lookahead=2"), "4s")])
def test_a_budget_run_corrects_its_length_and_equals_the_fixed_run_of_that_length(class_folders, tmp_path, monkeypatch,
                                                                                  capsys, pace, averaging, budget):
    extra = ("data.val_fraction=0.25", "schedule.name=onecycle", "augment.hflip=true", *averaging)
    s = prepare(tiny_config(class_folders, tmp_path / "budget", *extra, f"train.time_budget={budget}"), run_name="t")
    assert s.cfg.schedule.warmup_epochs == 0.25 * s.plan.epochs and s.plan.correct_at > 0  # the rise, pinned
    planned, planned_epochs = s.plan.epochs * s.plan.steps, s.plan.epochs
    steps_at_pace(monkeypatch, s, pace, pace)
    fit(s)
    out = capsys.readouterr().out
    saved = yaml.safe_load((s.run_dir / "config.yaml").read_text())
    record = json.loads((s.run_dir / "budget.json").read_text())
    corrected = record["correction"]
    assert corrected["pace"] == pytest.approx(pace, abs=1e-4) and not record["late_corrections"]  # on time after it
    if pace > 1:  # it found itself slow and ended sooner
        assert corrected["max_steps"] < planned
    else:  # fast: it trained on past the epochs it planned
        assert corrected["max_steps"] > planned and saved["train"]["epochs"] > planned_epochs
    final = corrected["max_steps"]
    assert saved["train"]["max_steps"] == final == s.state.history[-1]["step"]
    assert saved["train"]["epochs"] == len(s.state.history) == math.ceil(final / s.plan.steps)
    assert f"after {s.plan.correct_at} steps the run's steps are at" in out and "length corrected after step" in out
    # --retrain-on-all plans anew, the rise from pct_start again
    assert record["pinned_rise"] and retrain_config(s.run_dir).schedule.warmup_epochs == 0
    # the fixed run is the run's own config.yaml replayed, without the budget
    replay = load_config(str(s.run_dir / "config.yaml"), ["train.time_budget=", f"train.out_dir={tmp_path / 'fixed'}"])
    assert replay.train.max_steps == final
    assert replay.schedule.warmup_epochs == s.cfg.schedule.warmup_epochs
    fixed = prepare(replay, run_name="t")
    fit(fixed)
    a, b = load_checkpoint(s.run_dir / "last.pt")["model"], load_checkpoint(fixed.run_dir / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_whose_steps_slow_down_moves_its_end_and_equals_the_fixed_run_of_its_config(class_folders, tmp_path,
                                                                                           monkeypatch, capsys):
    """Steps at the timed pace until the first correction, then at twice it: at an epoch's end the run moves its
    end sooner, the rest of the one-cycle re-laid over the steps left, and a replay of its config.yaml trains the
    same weights."""
    s = prepare(tiny_config(class_folders, tmp_path / "budget", "data.val_fraction=0.25", "schedule.name=onecycle",
                            "train.batch_size=2", "train.ema_decay=0.9", "train.lookahead=2", "train.time_budget=8s"),
                run_name="t")
    steps_at_pace(monkeypatch, s, 1.0, 2.0)
    fit(s)
    record = json.loads((s.run_dir / "budget.json").read_text())
    first, late = record["correction"], record["late_corrections"]
    assert first["pace"] == pytest.approx(1.0) and late and late[0]["pace"] == pytest.approx(2.0)
    assert late[0]["planned_steps"] == first["max_steps"] and late[-1]["max_steps"] < first["max_steps"]
    saved = yaml.safe_load((s.run_dir / "config.yaml").read_text())["train"]
    assert saved["max_steps"] == late[-1]["max_steps"] == s.state.history[-1]["step"]
    assert saved["end_moves"][0] == [late[0]["after_step"], first["max_steps"]] and len(saved["end_moves"]) == len(late)
    assert f"moved after step {late[0]['after_step']} (steps at 2.00x)" in capsys.readouterr().out
    # the schedule ends where the run does: the one-cycle's last rate at the run's last step
    final = s.cfg.optim.lr / s.cfg.schedule.div_factor / s.cfg.schedule.final_div_factor
    assert s.state.history[-1]["lr"] == pytest.approx(final)
    replay = load_config(str(s.run_dir / "config.yaml"), ["train.time_budget=", f"train.out_dir={tmp_path / 'fixed'}"])
    fixed = prepare(replay, run_name="t")
    fit(fixed)
    a, b = load_checkpoint(s.run_dir / "last.pt"), load_checkpoint(fixed.run_dir / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]) for k in a["ema"]["module"])
    assert a["config"]["train"] == saved  # the checkpoint's copy of the config is config.yaml's


def test_a_late_decision_keeps_an_end_on_time_and_moves_one_that_is_not():
    """After 600 of 1000 steps, 70 s in (so 1 s an epoch end, 5 s for the test: ending at ~120 s of 300): on
    track at the aim (99% of the budget), the end stays; at twice the pace the rest no longer fits, and the
    end moves sooner; the test's time is the probe's at the run's own validation speed."""
    p, sizes = plan(budget_s=120.0 / MARGIN), lambda e: [28] * e
    kept = corrected_steps(p, elapsed=70.0, done=600, k=K, pace=1.0, end_s=1.0, sizes=sizes, end=1000, tolerance=0.02)
    assert kept["max_steps"] is None and "as it aims to" in kept["line"]
    slow = corrected_steps(p, elapsed=70.0, done=600, k=K, pace=2.0, end_s=1.0, sizes=sizes, end=1000, tolerance=0.02)
    # 45.7 s left before the test: epochs 6-8 (40 s of 0.2 s steps, 3 ends), then 8 steps of a 9th and its end
    assert slow["planned_steps"] == 1000 and slow["max_steps"] == 808
    timed = plan(infer_s=1e-3, finish_images=2000, finish_s=2.5)  # 2 s of inference + 0.5 s
    history = [{"val_images_per_s": 10.0}] + [{"val_images_per_s": v} for v in (400.0, 500.0, 800.0)]
    assert finish_estimate(timed, history) == pytest.approx(2.5 + 2000 * (1 / 500 - 1e-3))  # the first left out
    assert finish_estimate(plan(), history) == 5.0  # no inference timed: the probe's
    # under torchrun 2 processes validate and 1 tests: s an image is 2 / their speed
    assert finish_estimate(timed, history, 2) == pytest.approx(2.5 + 2000 * (2 / 500 - 1e-3))
    with pytest.raises(UserError, match=r"set train.max_steps above 200, or train.end_moves=\[\]"):
        load_config(None, ["train.end_moves=[[200, 400]]", "train.max_steps=150"])  # a length before its last move
    # a length the user gives turns a recipe's budget off and keeps what the user gave
    given = load_config("fashion-mnist-fast", ["train.end_moves=[[10, 100]]", "train.max_steps=50"]).train
    assert (given.time_budget, given.end_moves, given.max_steps) == ("", [[10, 100]], 50)


def test_the_schedule_as_laid_maps_each_step_of_a_moved_run():
    """A run laid over 100 steps, moved at step 60 to end at 80, then at 70 to end at 90: steps before the first
    move are themselves; from each move on, the rest of the schedule is spread evenly, the last step on 99."""
    assert laid_position(59, 90, []) == (59, 90)
    moves = [[60, 100], [70, 80]]
    got = [laid_position(t, 90, moves) for t in (0, 59, 60, 69, 70, 89)]
    assert [laid for _, laid in got] == [100] * 6
    one = 60 + 9 * 39 / 19  # step 69: 9 of the 19 steps to 79, which lands on 99
    assert [p for p, _ in got] == pytest.approx([0, 59, 60, one, one + 39 / 19, 99])
    assert laid_position(60, 61, [[60, 100]]) == (99.0, 100)  # one step left: the schedule's last


def test_max_steps_ends_the_run_inside_its_last_epoch_where_the_schedule_ends(class_folders, tmp_path):
    # 5 epochs of 4 steps, ended at step 9: the epochs after it do not train a step each
    s = prepare(tiny_config(class_folders, tmp_path, "train.epochs=5", "train.max_steps=9", "schedule.name=onecycle",
                            "train.batch_size=4", "train.steps_per_epoch=4"), run_name="t")
    assert s.steps_per_epoch == 4
    fit(s)
    assert [h["step"] for h in s.state.history] == [4, 8, 9]
    final = s.cfg.optim.lr / s.cfg.schedule.div_factor / s.cfg.schedule.final_div_factor
    assert s.state.history[-1]["lr"] == final  # the one-cycle's last rate, at step 9 of 12
    assert load_checkpoint(s.run_dir / "last.pt")["global_step"] == 9
    more = prepare(None, run_name="t", resume=s.run_dir, overrides=["train.epochs=6"])
    with pytest.raises(UserError, match=r"finished 3 of train.epochs=6 and reached train.max_steps=9; resume with "
                                        r"train.max_steps=0 and train.epochs=4 or more"):
        fit(more)  # more epochs alone would train past the step the run ended at


def test_the_pace_is_read_on_the_later_half_of_the_timed_steps_without_its_slowest_stalls():
    """A run slow for its first minutes (a job beside it that has ended) is judged by its later steps."""
    p = plan(epochs=4, steps=100, full_steps=100, correct_at=201)
    correction = LengthCorrection(SimpleNamespace(plan=p, steps_per_epoch=100, cfg=Config(),
                                                  data=SimpleNamespace(image_size=28)))
    now = 0.0
    for step in range(200):  # 0.2 s a step (0.1 planned) for the first 100, then 0.11 s, with one 5 s stall
        now += (0.2 if step < 100 else 0.11) + (5.0 if step == 150 else 0.0)
        correction.step_done(step, now)
    pace, _ = correction.measured()
    assert pace == pytest.approx(1.1)


def test_a_pinned_rung_is_the_one_timed_and_trained(class_folders, tmp_path):
    wide, narrow = "[64, 128, 256, 512]", "[8, 8, 16, 16]"
    s = prepare(tiny_config(class_folders, tmp_path, "train.time_budget=1m", "train.ladder_rung=1",
                            f"train.ladder=[{{model.filters: {wide}}}, {{model.filters: {narrow}}}]"), run_name="t")
    assert s.plan.rung == 1 and s.cfg.model.filters == [8, 8, 16, 16] and s.cfg.train.ladder_rung == -1
    table = s.plan.table()
    assert "train.ladder_rung=1 pins it" in table[0] and table[1].endswith("not timed (train.ladder_rung=1)")
    with pytest.raises(UserError, match=r"train.ladder_rung=2 names no rung: train.ladder has 2 \(0 to 1\)"):
        load_config(None, ["train.time_budget=1m", "train.ladder_rung=2",
                           f"train.ladder=[{{model.filters: {wide}}}, {{model.filters: {narrow}}}]"])


def test_rungs_timed_beside_another_job_are_said_so():
    from resnetlab.budget.plan import _decide

    def rung(others):
        return Config(), SimpleNamespace(image_size=28), {
            "step_s": {28: 0.2}, "epoch_overhead_s": 1.0, "finish_s": 5.0, "infer_s": 1e-3, "finish_images": 4000,
            "full_steps": 100, "timed_steps": {28: 30}, "others_cpu": others}

    alone = _decide(300.0, 10.0, [{}], 1, [rung(0.05)])[1]
    assert "other processes" not in "\n".join(alone.table())
    shared = _decide(300.0, 10.0, [{}], 1, [rung(0.6)])[1]
    assert "other processes were using the CPU while rungs were timed" in shared.table()[0]
    assert shared.table()[1].endswith("(timed while other processes kept 60% of the CPUs busy)")
