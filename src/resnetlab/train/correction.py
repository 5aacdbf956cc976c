"""The time budget's one correction: once the schedule's length-free steps are done (a one-cycle rise,
a warm-up), the run compares its own clock with the plan and sets the step it ends at.

A plan is timed on a few seconds of steps before the run; on a shared CPU the run's own steps then ran
5-10% slower or faster for minutes at a time (9-minute demos ended at 92-107% of their budget). The
steps before ``Plan.correct_at`` have the same rates whatever the run's length, so after them the run
may end at any step and still be exactly the fixed run of that length: config.yaml gets
``train.max_steps`` (and ``train.epochs`` to hold it), and a resume or a fixed run replays it.

    pace = (s since the first few steps) / (what the plan expected for them)   # one factor, steps and validation
    end  = now + pace x (steps left x step time + epoch ends left x validation) + test and report

The pace is counted from the first step, not from the plan: building the run's model and folder
after the plan took 1-2 s, which in a 3-minute run read as a 5% slower pace and ended it at 94%.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict

from resnetlab import run_folder as rf
from resnetlab.config import save_config
from resnetlab.io import atomic_write_text
from resnetlab.train import distributed
from resnetlab.train.budget import WARMUP_STEPS, Plan, clock, epoch_sizes, step_cost
from resnetlab.train.session import Session

# plan to 99% of what is left: the pace is now measured on the run's own steps (a 3-minute run corrected
# at 0.98 ended at 96%, 3 s of it a test-and-report estimate since lowered)
MARGIN = 0.99


class LengthCorrection:
    """Made by fit() just before the first step of a run with a plan; ``step_done`` is called after
    every step and acts once, after ``at`` = ``Plan.correct_at`` steps: it sets the run's last step from
    the pace so far (rank 0 decides for all ranks); config.yaml and budget.json record it. The clock
    starts after the first WARMUP_STEPS steps, as the planner's timing does: a run's first steps carry
    one-off costs (allocations, worker start-up, torch.compile, cuDNN's algorithm search) that the rest
    of the run does not repeat."""

    def __init__(self, s: Session):
        self.s, self.at = s, s.plan.correct_at
        self.clock_from = WARMUP_STEPS if self.at > 2 * WARMUP_STEPS else 0  # steps left off the clock
        self.began = time.monotonic()

    def step_done(self, step: int) -> str | None:
        """After global step ``step`` (0-based): the correction's line at ``at``, else None."""
        if step + 1 == self.clock_from:
            self.began = time.monotonic()
        if step + 1 != self.at:
            return None
        s = self.s
        if s.dist.main:
            now = time.monotonic()
            decision = corrected_steps(s.plan, elapsed=now - s.started, trained=now - self.began, done=self.at,
                                       k=s.steps_per_epoch, sizes=lambda e: epoch_sizes(s.cfg, s.data, e),
                                       clock_from=self.clock_from)
        return apply_correction(s, distributed.broadcast_object(decision if s.dist.main else None, s.dist))


def apply_correction(s: Session, decision: dict) -> str:
    """Every rank sets the decided length; rank 0 rewrites config.yaml and budget.json (atomically)."""
    plan, k = s.plan, s.steps_per_epoch
    plan.correction = decision
    if decision["max_steps"] is None:
        return decision["line"]
    s.cfg.train.max_steps = decision["max_steps"]
    s.cfg.train.epochs = math.ceil(decision["max_steps"] / k)
    plan.epochs, plan.predicted_s = s.cfg.train.epochs, decision["predicted_s"]
    if s.dist.main:
        save_config(s.cfg, s.run_dir / rf.CONFIG)
        atomic_write_text(s.run_dir / rf.BUDGET, json.dumps(asdict(plan), indent=2) + "\n")
    return decision["line"]


def corrected_steps(plan: Plan, *, elapsed: float, trained: float, done: int, k: int, sizes,
                    clock_from: int = 0) -> dict:
    """The step the run should end at (``max_steps``; None: keep the plan) with what it was chosen from.
    ``elapsed``: s since the run began (prepare); ``trained``: s of steps ``clock_from`` .. ``done`` - 1
    and the epoch ends among them, ``k`` steps an epoch; ``sizes(E)``: each epoch's training side in px
    for an E-epoch run."""
    epoch = (done - 1) // k  # the epoch of the last step done; its end (validation, saving) is still to come
    old_sizes, planned = sizes(plan.epochs), plan.epochs * k
    ends = epoch - ((clock_from - 1) // k if clock_from else 0)  # epoch ends on the clock
    expected = _steps_s(plan.step_s, old_sizes, k, clock_from, done) + ends * plan.epoch_overhead_s
    pace = trained / max(expected, 1e-9)
    room = (MARGIN * (plan.budget_s - elapsed) - plan.finish_s) / pace  # s left for steps and epoch ends, as planned
    best = done + 1  # at least one step more: the schedule's last step
    for epochs in range(epoch + 1, 100_000):
        new = sizes(epochs)
        first = max(done, (epochs - 1) * k)  # where the last epoch's steps still to come begin
        left = room - (epochs - epoch) * plan.epoch_overhead_s - _steps_s(plan.step_s, new, k, done, first)
        # (+1e-9: 3 s of 0.1 s steps is 30 steps, not 29.999...)
        end = min(epochs * k, first + math.floor(left / step_cost(plan.step_s, new[-1]) + 1e-9)) if left > 0 else first
        best = max(best, end)
        if end < epochs * k:
            break
    epochs = math.ceil(best / k)
    new = sizes(epochs)
    if new[:epoch + 1] != old_sizes[:epoch + 1]:  # progressive resizing would change an epoch already begun
        return {"after_step": done, "pace": round(pace, 4), "planned_steps": planned, "max_steps": None,
                "line": f"time budget: after {done} steps the run is at {pace:.2f}x the pace it timed; its length "
                        f"stays at {planned} steps (a new length would resize epochs already trained)"}
    left = _steps_s(plan.step_s, new, k, done, best) + (epochs - epoch) * plan.epoch_overhead_s
    predicted = elapsed + pace * left + plan.finish_s
    return {"after_step": done, "pace": round(pace, 4), "planned_steps": planned, "max_steps": best,
            "predicted_s": round(predicted, 2),
            "line": f"time budget: after {done} steps the run is at {pace:.2f}x the pace it timed: {planned} -> "
                    f"{best} steps ({best / k:.2f} epochs), ending at ~{clock(predicted)}"}


def _steps_s(step_s: dict[int, float], sizes: list[int], k: int, start: int, end: int) -> float:
    """Planned s of steps [start, end), epoch e's steps at ``sizes[e]`` px."""
    total = 0.0
    while start < end:
        stop = min(end, (start // k + 1) * k)
        total += (stop - start) * step_cost(step_s, sizes[start // k])
        start = stop
    return total
