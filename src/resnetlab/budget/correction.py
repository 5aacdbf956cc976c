"""The time budget's length corrections, a callback of the run (run/fit.py). Once the schedule's length-free
steps are done (a one-cycle rise), the run's own pace sets the step it ends at; later, at an epoch's end, it
moves that end again when the run's recent pace would end it more than LATE_TOLERANCE of the budget away from
it, re-laying what is left of the schedule over the new steps (train.end_moves). The loop keeps the end in its
state; config.yaml gets train.max_steps and train.end_moves, so a replay is the same run. The arithmetic:
docs/design.md, "The time budget"."""

from __future__ import annotations

import math
import statistics
import time
from typing import NamedTuple

from rich.console import Console

from resnetlab import run_folder as rf
from resnetlab.budget.plan import MARGIN, Plan, clock, step_cost, write_plan
from resnetlab.budget.probe import WARMUP_STEPS, epoch_sizes
from resnetlab.config import evolve, save_config
from resnetlab.train import distributed
from resnetlab.train.loop import RunEnd
from resnetlab.train.schedules import length_free_steps
from resnetlab.train.session import Session, corrected_length

LATE_TOLERANCE = 0.02  # of the budget: a late move only when the run would end further than this from its aim
LATE_MIN_STEPS = 10  # timed steps since the first decision before a late one: fewer read a pace too noisy


def monotonic() -> float:
    """The corrections' clock (a test drives it by hand)."""
    return time.monotonic()


class Decision(NamedTuple):
    line: str  # what the user is told
    end: RunEnd | None  # where the run now ends; None: where it did


class LengthCorrection:
    """``step_done`` times every step; it decides once after ``Plan.correct_at`` steps, then may move the end
    at an epoch's last step (rank 0 decides for all ranks); ``report`` says at the end how the run kept to
    its budget."""

    def __init__(self, s: Session):
        self.s, self.at, self.k = s, s.plan.correct_at, s.steps_per_epoch
        self.correction: dict = {}  # what the first decision measured and chose
        self.late: list[dict] = []  # each late move's
        self.end = s.plan.epochs * s.plan.steps  # the step the run ends at, as decided so far
        self.moves: tuple[tuple[int, int], ...] = ()
        # a schedule that ignores the run's length (constant, step, sgdr) needs no re-laying: only the end moves
        self.free = length_free_steps(s.cfg.schedule, self.k)
        self.relays = math.isfinite(self.free)
        self.clock_from = WARMUP_STEPS if self.at > 2 * WARMUP_STEPS else 1  # steps left off the clock
        self.sizes = epoch_sizes(s.cfg, s.data, s.plan.epochs)
        self.last = monotonic()
        self.steps: list[tuple[float, float]] = []  # (s taken, s planned) of each timed step inside an epoch
        # gaps that hold an epoch end (and the next step): s taken and planned, summed
        self.ends_s = self.ends_planned = 0.0
        self.ends = 0

    def step_done(self, step: int, now: float | None = None) -> Decision | None:
        """After global step ``step`` (0-based): the decision after step ``at`` - 1, and a late one where
        one is due; else None."""
        now = monotonic() if now is None else now
        self._time(step, now)
        if self.at and (step + 1 == self.at or step + 1 > self.at and self._late_due(step)):
            return self._decide(step + 1, now, first=step + 1 == self.at)
        return None

    def _time(self, step: int, now: float) -> None:
        if step >= self.clock_from:
            planned = step_cost(self.s.plan.step_s, self.sizes[min(step // self.k, len(self.sizes) - 1)])
            if step % self.k:
                self.steps.append((now - self.last, planned))
            elif step >= 2 * self.k:  # the gap holds an epoch end; the first draws the first curves (off the clock)
                self.ends, self.ends_s, self.ends_planned = self.ends + 1, self.ends_s + now - self.last, \
                    self.ends_planned + planned
        self.last = now

    def _late_due(self, step: int) -> bool:
        """An epoch's last step past the schedule's length-free steps (a move re-lays what follows it), with a
        pace to read since the first decision and an epoch still to come."""
        return step % self.k == self.k - 1 and len(self.steps) >= LATE_MIN_STEPS and self.end - (step + 1) >= self.k \
            and (not self.relays or step + 1 >= self.free)

    def _decide(self, done: int, now: float, *, first: bool) -> Decision | None:
        s = self.s
        if s.dist.main:
            pace, end_s = self.measured(later_half=first)
            decision = corrected_steps(s.plan, elapsed=s.clock.elapsed(now), done=done, k=self.k, pace=pace,
                                       end_s=end_s, sizes=lambda e: epoch_sizes(s.cfg, s.data, e), end=self.end,
                                       finish_s=finish_estimate(s.plan, s.state.history, s.dist.world),
                                       tolerance=0.0 if first else LATE_TOLERANCE)
        if first:  # the late decisions read the steps after it
            self.steps = []
        return self.apply(distributed.broadcast_object(decision if s.dist.main else None, s.dist), first=first)

    def measured(self, *, later_half: bool = True) -> tuple[float, float]:
        """(the steps' pace against the plan, s an epoch end; without a timed end, the plan's at that pace).
        The pace is read on the timed steps before the first decision, or since it (a late one: all of them,
        so that an epoch's noise does not move the end back and forth), the slowest 5% left out. The first
        decision reads the later half: a run's first minutes are often slower than the rest (a job beside it
        that has ended), and one-off stalls (TensorBoard's import) weigh on a short run's few steps."""
        plan = self.s.plan
        if not self.steps:  # epochs of one step: every gap holds an epoch end, one factor for both
            pace = self.ends_s / (self.ends_planned + self.ends * plan.epoch_overhead_s) if self.ends else 1.0
            return pace, pace * plan.epoch_overhead_s
        later = sorted(self.steps[len(self.steps) // 2:] if later_half else self.steps)
        later = later[:len(later) - max(len(later) // 20, 1)] or later
        pace = sum(taken for taken, _ in later) / sum(planned for _, planned in later)
        if not self.ends:
            return pace, pace * plan.epoch_overhead_s
        return pace, max(self.ends_s - pace * self.ends_planned, 0.0) / self.ends

    def apply(self, decision: dict, *, first: bool) -> Decision | None:
        """Keep a decision; where the end moves, rank 0 records it: config.yaml (the run a replay trains) and
        budget.json. A late decision that keeps the end says nothing (None)."""
        s = self.s
        if first:
            self.correction = decision
        moved = decision["max_steps"] is not None and decision["max_steps"] != self.end
        if not first and not moved:
            return None
        if not first:
            self.late.append(decision)
            if self.relays:  # from this step on, the rest of the schedule is spread over the new steps
                self.moves += ((decision["after_step"], self.end),)
        if decision["max_steps"] is None:
            return Decision(decision["line"], None)
        self.end = decision["max_steps"]
        self.sizes = epoch_sizes(s.cfg, s.data, math.ceil(self.end / self.k))
        if s.dist.main:
            cfg = evolve(s.cfg, corrected_length(self.end, self.moves, self.k), source="time budget")
            save_config(cfg, s.run_dir / rf.CONFIG)
            write_plan(s.run_dir, s.plan, **self._record())
        return Decision(decision["line"], RunEnd(self.end, self.moves))

    def _record(self) -> dict:
        """budget.json's account of the decisions: the first, the late moves, the length and end they chose."""
        last = (self.late or [self.correction])[-1]
        predicted = last["predicted_s"] if last.get("max_steps") else self.s.plan.predicted_s
        return {"correction": self.correction, "late_corrections": self.late,
                "epochs": math.ceil(self.end / self.k), "predicted_s": predicted}

    def report(self, console: Console, *, trained_at: float) -> None:
        """How the run kept to its budget, in budget.json and one line; beside each planned part the
        measured one, so a run that overshoots says which part the plan got wrong."""
        s, plan, now = self.s, self.s.plan, time.monotonic()
        took = s.clock.elapsed(now)
        steps_s = sum(h["seconds"] for h in s.state.history)  # the epochs' training steps, validation not included
        epochs = max(len(s.state.history), 1)
        record = self._record()
        planned_steps_s = record["predicted_s"] - plan.used_s - plan.finish_s - record["epochs"] * plan.epoch_overhead_s
        actual = {"actual_s": round(took, 2), "actual_steps_s": round(steps_s, 2),
                  "planned_steps_s": round(planned_steps_s, 2),
                  "actual_epoch_overhead_s": round((s.clock.elapsed(trained_at) - plan.used_s - steps_s) / epochs, 2),
                  "actual_finish_s": round(now - trained_at, 2)}
        if s.dist.main:
            write_plan(s.run_dir, plan, **record, **actual)
        console.print(f"time budget {clock(plan.budget_s)}: the run took {clock(took)} "
                      f"({100 * took / plan.budget_s:.0f}%): steps {actual['actual_steps_s']:.0f} s (planned "
                      f"{actual['planned_steps_s']:.0f}), validating and saving "
                      f"{actual['actual_epoch_overhead_s']:.1f} s an epoch (planned {plan.epoch_overhead_s:.1f}), "
                      f"test and report {actual['actual_finish_s']:.0f} s (planned {plan.finish_s:.0f})"
                      + _corrected_text(self.correction, self.late))


def finish_estimate(plan: Plan, history: list[dict], world: int = 1) -> float:
    """s for the test and report: the probe's, its inference at the run's own validation speed (the median of
    the epochs' after the first, whose pass pays a new model's first batches), where both were timed. Under
    torchrun validation runs on ``world`` processes and the test on one: s an image is world / that speed."""
    speeds = [h["val_images_per_s"] for h in history[1:] if h.get("val_images_per_s")]
    if not speeds or not plan.infer_s:
        return plan.finish_s
    return plan.finish_s + plan.finish_images * (world / statistics.median(speeds) - plan.infer_s)


def corrected_steps(plan: Plan, *, elapsed: float, done: int, k: int, pace: float, end_s: float, sizes,
                    end: int = 0, finish_s: float | None = None, tolerance: float = 0.0) -> dict:
    """The step the run should end at (``max_steps``; None: keep ``end``) and what it was chosen from,
    ``elapsed`` s into the run after ``done`` steps of ``k`` an epoch; ``sizes(E)``: each epoch's px; ``end``:
    where the run ends now (0: the plan's); ``finish_s``: s for the test and report (None: the plan's);
    ``tolerance``: the end is kept while it would end within this share of the budget of the aim."""
    planned = end or plan.epochs * k
    finish_s = plan.finish_s if finish_s is None else finish_s
    epoch = (done - 1) // k  # the epoch of the last step done; its end (validation, saving) is still to come
    old_sizes = sizes(math.ceil(planned / k))
    room = MARGIN * (plan.budget_s - elapsed) - finish_s  # s left for steps and epoch ends
    said = (f"time budget: after {done} steps the run's steps are at {pace:.2f}x the pace it timed, an epoch end "
            f"{end_s:.1f} s")
    facts = {"after_step": done, "pace": round(pace, 4), "end_s": round(end_s, 3), "finish_s": round(finish_s, 2),
             "planned_steps": planned}
    if tolerance:
        now_end = elapsed + pace * _steps_s(plan.step_s, old_sizes, k, done, planned) \
            + (math.ceil(planned / k) - epoch) * end_s + finish_s
        if abs(now_end - elapsed - finish_s - room) <= tolerance * plan.budget_s:
            return {**facts, "max_steps": None, "line": f"{said}; it ends at ~{clock(now_end)}, as it aims to"}
    best = done + 1  # at least one step more: the schedule's last step
    for epochs in range(epoch + 1, 100_000):
        new = sizes(epochs)
        first = max(done, (epochs - 1) * k)  # where the last epoch's steps still to come begin
        left = room - (epochs - epoch) * end_s - pace * _steps_s(plan.step_s, new, k, done, first)
        # (+1e-9: 3 s of 0.1 s steps is 30 steps, not 29.999...)
        step = pace * step_cost(plan.step_s, new[-1])
        stop = min(epochs * k, first + math.floor(left / step + 1e-9)) if left > 0 else first
        best = max(best, stop)
        if stop < epochs * k:
            break
    # a last epoch shorter than its own end buys nothing: its few steps run at the schedule's ~0 lr
    tail = best % k
    tail_s = pace * tail * step_cost(plan.step_s, sizes(math.ceil(best / k))[-1])
    if tail and best - tail > done and tail_s < end_s:
        best -= tail
    epochs = math.ceil(best / k)
    new = sizes(epochs)
    if new[:epoch + 1] != old_sizes[:epoch + 1]:  # progressive resizing would change an epoch already begun
        return {**facts, "max_steps": None,
                "line": f"{said}; its length stays at {planned} steps (a new length would resize epochs already "
                        "trained)"}
    predicted = elapsed + pace * _steps_s(plan.step_s, new, k, done, best) + (epochs - epoch) * end_s + finish_s
    return {**facts, "max_steps": best, "predicted_s": round(predicted, 2),
            "line": f"{said}: {planned} -> {best} steps ({best / k:.2f} epochs), ending at ~{clock(predicted)}"}


def _steps_s(step_s: dict[int, float], sizes: list[int], k: int, start: int, end: int) -> float:
    """Planned s of steps [start, end), epoch e's steps at ``sizes[e]`` px."""
    total = 0.0
    while start < end:
        stop = min(end, (start // k + 1) * k)
        total += (stop - start) * step_cost(step_s, sizes[start // k])
        start = stop
    return total


def _corrected_text(correction: dict, late: list[dict]) -> str:
    if not correction:
        return ""
    measured = f"steps at {correction['pace']:.2f}x the timed pace, epoch ends {correction['end_s']:.1f} s"
    if correction["max_steps"] is None:
        text = f"; length kept after step {correction['after_step']} ({measured})"
    else:
        text = (f"; length corrected after step {correction['after_step']} ({measured}): "
                f"{correction['planned_steps']} -> {correction['max_steps']} steps")
    for move in late:
        text += (f"; moved after step {move['after_step']} (steps at {move['pace']:.2f}x): {move['planned_steps']} -> "
                 f"{move['max_steps']} steps")
    return text
