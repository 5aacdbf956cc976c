"""The time budget's one length correction, a callback of the run (run/fit.py): once the schedule's
length-free steps are done (a one-cycle rise), the run's own pace sets the step it ends at, which the
loop keeps in its state; config.yaml gets that train.max_steps, so a replay is the fixed run of that
length. The arithmetic: docs/design.md, "The time budget"."""

from __future__ import annotations

import math
import time
from typing import NamedTuple

from rich.console import Console

from resnetlab import run_folder as rf
from resnetlab.budget.plan import MARGIN, Plan, clock, step_cost, write_plan
from resnetlab.budget.probe import WARMUP_STEPS, epoch_sizes
from resnetlab.config import evolve, save_config
from resnetlab.train import distributed
from resnetlab.train.session import Session


class Decision(NamedTuple):
    line: str  # what the user is told
    max_steps: int | None  # the step the run now ends at; None: the plan's length stays


class LengthCorrection:
    """``step_done`` times every step and decides once, after ``Plan.correct_at`` steps (rank 0 for all
    ranks); ``report`` says at the end how the run kept to its budget."""

    def __init__(self, s: Session):
        self.s, self.at, self.k = s, s.plan.correct_at, s.steps_per_epoch
        self.correction: dict = {}  # what it measured and chose
        self.clock_from = WARMUP_STEPS if self.at > 2 * WARMUP_STEPS else 1  # steps left off the clock
        self.sizes = epoch_sizes(s.cfg, s.data, s.plan.epochs)
        self.last = time.monotonic()
        self.steps: list[tuple[float, float]] = []  # (s taken, s planned) of each timed step inside an epoch
        # gaps that hold an epoch end (and the next step): s taken and planned, summed
        self.ends_s = self.ends_planned = 0.0
        self.ends = 0

    def step_done(self, step: int, now: float | None = None) -> Decision | None:
        """After global step ``step`` (0-based): the correction's decision at ``at``, else None."""
        if step >= self.at:  # it acts once; the run may now be longer than the plan ``sizes`` was made for
            return None
        now = time.monotonic() if now is None else now
        if step >= self.clock_from:
            planned = step_cost(self.s.plan.step_s, self.sizes[step // self.k])
            if step % self.k:
                self.steps.append((now - self.last, planned))
            elif step >= 2 * self.k:  # the gap holds an epoch end; the first draws the first curves (off the clock)
                self.ends, self.ends_s, self.ends_planned = self.ends + 1, self.ends_s + now - self.last, \
                    self.ends_planned + planned
        self.last = now
        if step + 1 != self.at:
            return None
        s = self.s
        if s.dist.main:
            pace, end_s = self.measured()
            decision = corrected_steps(s.plan, elapsed=s.clock.elapsed(now), done=self.at, k=self.k, pace=pace,
                                       end_s=end_s, sizes=lambda e: epoch_sizes(s.cfg, s.data, e))
        return self.apply(distributed.broadcast_object(decision if s.dist.main else None, s.dist))

    def measured(self) -> tuple[float, float]:
        """(the steps' pace against the plan, s an epoch end; without a timed end, the plan's at that pace).
        The pace is read on the later half of the timed steps, the slowest 5% left out: a run's first
        minutes are often slower than the rest (a job beside it that has ended), and one-off stalls
        (TensorBoard's import) weigh on a short run's few steps."""
        plan = self.s.plan
        if not self.steps:  # epochs of one step: every gap holds an epoch end, one factor for both
            pace = self.ends_s / (self.ends_planned + self.ends * plan.epoch_overhead_s) if self.ends else 1.0
            return pace, pace * plan.epoch_overhead_s
        later = sorted(self.steps[len(self.steps) // 2:])
        later = later[:len(later) - max(len(later) // 20, 1)] or later
        pace = sum(taken for taken, _ in later) / sum(planned for _, planned in later)
        if not self.ends:
            return pace, pace * plan.epoch_overhead_s
        return pace, max(self.ends_s - pace * self.ends_planned, 0.0) / self.ends

    def apply(self, decision: dict) -> Decision:
        """Rank 0 records the decided length: config.yaml (the fixed run a replay trains) and budget.json."""
        s, self.correction = self.s, decision
        if decision["max_steps"] is not None and s.dist.main:
            cfg = evolve(s.cfg, {"train.max_steps": decision["max_steps"],
                                 "train.epochs": math.ceil(decision["max_steps"] / self.k)}, source="time budget")
            save_config(cfg, s.run_dir / rf.CONFIG)
            write_plan(s.run_dir, s.plan, correction=decision, epochs=cfg.train.epochs,
                       predicted_s=decision["predicted_s"])
        return Decision(decision["line"], decision["max_steps"])

    def report(self, console: Console, *, trained_at: float) -> None:
        """How the run kept to its budget, in budget.json and one line; beside each planned part the
        measured one, so a run that overshoots says which part the plan got wrong."""
        s, plan, now = self.s, self.s.plan, time.monotonic()
        took = s.clock.elapsed(now)
        steps_s = sum(h["seconds"] for h in s.state.history)  # the epochs' training steps, validation not included
        epochs = max(len(s.state.history), 1)
        planned_epochs, predicted = plan.epochs, plan.predicted_s
        if self.correction.get("max_steps") is not None:
            planned_epochs, predicted = math.ceil(self.correction["max_steps"] / self.k), self.correction["predicted_s"]
        planned_steps_s = predicted - plan.used_s - plan.finish_s - planned_epochs * plan.epoch_overhead_s
        actual = {"actual_s": round(took, 2), "actual_steps_s": round(steps_s, 2),
                  "planned_steps_s": round(planned_steps_s, 2),
                  "actual_epoch_overhead_s": round((s.clock.elapsed(trained_at) - plan.used_s - steps_s) / epochs, 2),
                  "actual_finish_s": round(now - trained_at, 2)}
        if s.dist.main:
            write_plan(s.run_dir, plan, correction=self.correction, epochs=planned_epochs, predicted_s=predicted,
                       **actual)
        console.print(f"time budget {clock(plan.budget_s)}: the run took {clock(took)} "
                      f"({100 * took / plan.budget_s:.0f}%): steps {actual['actual_steps_s']:.0f} s (planned "
                      f"{actual['planned_steps_s']:.0f}), validating and saving "
                      f"{actual['actual_epoch_overhead_s']:.1f} s an epoch (planned {plan.epoch_overhead_s:.1f}), "
                      f"test and report {actual['actual_finish_s']:.0f} s (planned {plan.finish_s:.0f})"
                      + _corrected_text(self.correction))


def corrected_steps(plan: Plan, *, elapsed: float, done: int, k: int, pace: float, end_s: float, sizes) -> dict:
    """The step the run should end at (``max_steps``; None: keep the plan) and what it was chosen from,
    ``elapsed`` s into the run after ``done`` steps of ``k`` an epoch; ``sizes(E)``: each epoch's px."""
    epoch = (done - 1) // k  # the epoch of the last step done; its end (validation, saving) is still to come
    old_sizes, planned = sizes(plan.epochs), plan.epochs * k
    room = MARGIN * (plan.budget_s - elapsed) - plan.finish_s  # s left for steps and epoch ends
    best = done + 1  # at least one step more: the schedule's last step
    for epochs in range(epoch + 1, 100_000):
        new = sizes(epochs)
        first = max(done, (epochs - 1) * k)  # where the last epoch's steps still to come begin
        left = room - (epochs - epoch) * end_s - pace * _steps_s(plan.step_s, new, k, done, first)
        # (+1e-9: 3 s of 0.1 s steps is 30 steps, not 29.999...)
        step = pace * step_cost(plan.step_s, new[-1])
        end = min(epochs * k, first + math.floor(left / step + 1e-9)) if left > 0 else first
        best = max(best, end)
        if end < epochs * k:
            break
    # a last epoch shorter than its own end buys nothing: its few steps run at the schedule's ~0 lr
    tail = best % k
    tail_s = pace * tail * step_cost(plan.step_s, sizes(math.ceil(best / k))[-1])
    if tail and best - tail > done and tail_s < end_s:
        best -= tail
    epochs = math.ceil(best / k)
    new = sizes(epochs)
    said = (f"time budget: after {done} steps the run's steps are at {pace:.2f}x the pace it timed, an epoch end "
            f"{end_s:.1f} s")
    if new[:epoch + 1] != old_sizes[:epoch + 1]:  # progressive resizing would change an epoch already begun
        return {"after_step": done, "pace": round(pace, 4), "end_s": round(end_s, 3), "planned_steps": planned,
                "max_steps": None,
                "line": f"{said}; its length stays at {planned} steps (a new length would resize epochs already "
                        "trained)"}
    predicted = elapsed + pace * _steps_s(plan.step_s, new, k, done, best) + (epochs - epoch) * end_s + plan.finish_s
    return {"after_step": done, "pace": round(pace, 4), "end_s": round(end_s, 3), "planned_steps": planned,
            "max_steps": best, "predicted_s": round(predicted, 2),
            "line": f"{said}: {planned} -> {best} steps ({best / k:.2f} epochs), ending at ~{clock(predicted)}"}


def _steps_s(step_s: dict[int, float], sizes: list[int], k: int, start: int, end: int) -> float:
    """Planned s of steps [start, end), epoch e's steps at ``sizes[e]`` px."""
    total = 0.0
    while start < end:
        stop = min(end, (start // k + 1) * k)
        total += (stop - start) * step_cost(step_s, sizes[start // k])
        start = stop
    return total


def _corrected_text(correction: dict) -> str:
    if not correction:
        return ""
    measured = f"steps at {correction['pace']:.2f}x the timed pace, epoch ends {correction['end_s']:.1f} s"
    if correction["max_steps"] is None:
        return f"; length kept after step {correction['after_step']} ({measured})"
    return (f"; length corrected after step {correction['after_step']} ({measured}): "
            f"{correction['planned_steps']} -> {correction['max_steps']} steps")
