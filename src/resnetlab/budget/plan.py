"""train.time_budget: the ladder's rung and the run's length that fill the budget, chosen before the run
is built. Each rung (or the config, without a ladder) is a throwaway session timed here (probe.py);
the first that gets train.ladder_min_epochs epochs wins, else the one that gets the most. The result
is a new config, the fixed run of that length, which builds from the seed as any run does. The
arithmetic, and what was kept and dropped and why: docs/design.md, "The time budget"."""

from __future__ import annotations

import gc
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from resnetlab import run_folder as rf
from resnetlab.budget import cache as probe_cache
from resnetlab.budget.probe import epoch_sizes, measure
from resnetlab.config import Config, evolve, parse_duration, rung_config
from resnetlab.data import DataBundle, build_data
from resnetlab.device import hardware_class
from resnetlab.errors import UserError
from resnetlab.io import atomic_write_text
from resnetlab.train import distributed
from resnetlab.train.distributed import Dist
from resnetlab.train.session import build_session
from resnetlab.train.stages import length_free

MARGIN = 0.99  # plan to 99% of what is left: the run corrects its length from its own clock
SHARED = 0.2  # a rung timed while other processes kept more of the CPUs busy than this was timed beside a job


@dataclass(frozen=True)
class Hardware:
    """Where the run trains: what a plan is made for."""
    device: torch.device
    precision: str
    dist: Dist
    compile_wanted: bool

    def describe(self) -> str:
        processes = f" x {self.dist.world} processes" if self.dist.enabled else ""
        return hardware_class(self.device, self.precision) + processes


@dataclass
class Plan:
    budget_s: float
    used_s: float  # before the plan: data, model, timing
    step_s: dict[int, float]  # s a step, by image side in px
    epoch_overhead_s: float  # validation + checkpoint + curves, per epoch
    finish_s: float  # the test split and the report
    epochs: int
    steps: int  # per epoch
    full_steps: int
    predicted_s: float
    hardware: str = ""  # hardware_class(): what the steps were timed on
    rung: int | None = None  # the chosen index of train.ladder; None: no ladder
    rungs: list[dict] = field(default_factory=list)  # the table the rung was chosen from (_decide)
    rule: str = ""
    # after this many steps the run first corrects its length from its own clock (budget/correction.py; it may
    # move its end again at later epoch ends): the steps before it have the same rates whatever the length; 0: the
    # schedule allows no correction
    correct_at: int = 0
    correction: dict = field(default_factory=dict)  # what the correction measured and chose (correction.py)
    pinned_rise: bool = False  # schedule.warmup_epochs was set by this plan (pct_start x epochs), not given
    # the chosen rung's timings: "probed" here before the run, or "cached" from an earlier run's probe
    # (budget/cache.py); each row of ``rungs`` says the same of its own, with its cache file
    timing: str = ""
    infer_s: float = 0.0  # s an image of inference as timed (0: not timed): the corrections rescale the finish by it
    finish_images: int = 0  # images the test and report infer (the test's views, val)

    def line(self) -> str:
        steps = f"{self.steps} steps" if self.steps == self.full_steps else f"{self.steps} of {self.full_steps} steps"
        row = next((r for r in self.rungs if r["rung"] == (self.rung or 0)), {})
        timed = (f" (from the probe cache, {row['cache_file']})" if self.timing == "cached" else
                 f" (timed here: {row['cache_note']})" if row.get("cache_note") else " (timed here)" if row else "")
        return (f"time budget {clock(self.budget_s)}: {_rates(self.step_s)}{timed}; {self.epoch_overhead_s:.1f} s to "
                f"validate and save an epoch, ~{self.finish_s:.0f} s for the test and report, {self.used_s:.0f} s "
                f"used so far: {self.epochs} epochs of {steps}, ending at ~{clock(self.predicted_s)}; "
                + (f"the length is corrected from the run's own clock after step {self.correct_at}"
                   if self.correct_at else "no correction (no early steps that train alike whatever the run's length)"))

    def table(self) -> list[str]:
        """The ladder's rungs as timed here, the chosen one marked '>'."""
        lines = [f"ladder on {self.hardware}: {self.rule}"]
        if cached := [r for r in self.rungs if r.get("timing") == "cached"]:
            lines[0] += (f"; {'every rung' if len(cached) == len(self.rungs) else 'rungs marked cached'}: timings "
                         f"from the probe cache, {Path(cached[0]['cache_file']).parent} (train.probe_cache=false "
                         "times them anew)")
        if any((r.get("others_cpu") or 0) > SHARED for r in self.rungs):
            lines[0] += ("; other processes were using the CPU while rungs were timed, so the choice may be a smaller "
                         "rung than this machine trains alone (the run corrects its length from its own clock; "
                         "train.ladder_rung=N pins a rung)")
        for row in self.rungs:
            mark = ">" if row["rung"] == self.rung else " "
            what = _rung_text(row["set"])
            if row["step_s"] is None:
                lines.append(f" {mark} {row['rung']}: {what}: {row['note']}")
                continue
            fit = f"{row['epochs']} epochs" if row["epochs"] else "not one epoch fits"
            if (others := row.get("others_cpu") or 0) > SHARED:
                fit += f" (timed while other processes kept {100 * others:.0f}% of the CPUs busy)"
            if row.get("timing") == "cached":
                fit += " (cached)"
            lines.append(f" {mark} {row['rung']}: {what}: {_rates(row['step_s'])}, {row['epoch_s']:.0f} s an "
                         f"epoch: {fit}")
        return lines


def _rung_text(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the config as it is"


def _rates(step_s: dict[int, float]) -> str:
    return ", ".join(f"{1000 * v:.0f} ms a step at {k} px" for k, v in sorted(step_s.items()))


def write_plan(run_dir: Path, plan: Plan, **measured) -> None:
    """budget.json: the plan, what the correction chose, and (at the end) how the run kept to it."""
    atomic_write_text(run_dir / rf.BUDGET, json.dumps({**asdict(plan), **measured}, indent=2) + "\n")


def clock(seconds: float) -> str:
    m, sec = divmod(round(seconds), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def plan_budget(cfg: Config, data: DataBundle, hw: Hardware, *, started: float) -> tuple[Config, DataBundle, Plan]:
    """The rung and length that fill train.time_budget: (the rung's config with train.epochs and
    train.steps_per_epoch set, its data, the plan). Timing builds throwaway sessions; the caller
    puts the global RNG back afterwards, so the run's own model starts from the seed."""
    budget = parse_duration(cfg.train.time_budget, "train.time_budget")
    ladder, need, pin = cfg.train.ladder, cfg.train.ladder_min_epochs, cfg.train.ladder_rung
    # data.normalize=auto follows model.weights: a rung that changes either reads its own data
    rungs, datas = [(None, None, f"not timed (train.ladder_rung={pin})")] * max(pin, 0), \
        {repr((cfg.data, cfg.model.weights)): data}
    for i in range(max(pin, 0), max(len(ladder), 1)):
        rcfg = rung_config(cfg, i) if ladder else cfg
        if hw.dist.world > rcfg.train.batch_size:
            raise UserError(f"train.ladder[{i}]: {hw.dist.world} processes cannot share a global batch of "
                            f"{rcfg.train.batch_size}: raise that rung's train.batch_size")
        key = repr((rcfg.data, rcfg.model.weights))
        if key not in datas:
            datas[key] = build_data(rcfg, progress=cfg.train.progress, builder=hw.dist.local_rank == 0)
        rungs.append((rcfg, datas[key], _measure_rung(rcfg, datas[key], hw, started)))
        decision = distributed.broadcast_object(  # rank 0's clock decides for every rank
            _decide(budget, time.monotonic() - started, ladder, need, rungs) if hw.dist.main else None, hw.dist)
        if pin >= 0 or not isinstance(decision, str) and decision[1].epochs >= need:
            break
    if isinstance(decision, str):
        raise UserError(decision)
    chosen, plan = decision
    rcfg, rdata, _ = rungs[chosen]
    plan.hardware, plan.rung, plan.timing = hw.describe(), chosen if ladder else None, plan.rungs[chosen]["timing"]
    plan.rule = ("no ladder: the config as it is" if not ladder else f"train.ladder_rung={pin} pins it" if pin >= 0
                 else f"the first rung that gets {need} epochs, else the one that gets the most")
    changes = {"train.epochs": plan.epochs, "train.steps_per_epoch": 0 if plan.steps == plan.full_steps else plan.steps,
               "train.max_steps": 0, "train.end_moves": []}  # the corrections set the run's end, during the run
    if rcfg.stages:  # the earlier stages keep their epochs; each stage has its own schedule, so no correction
        return evolve(rcfg, changes, last_stage_epochs=_last_stage_epochs(rcfg, plan, budget)), rdata, plan
    sched = rcfg.schedule
    # the rise, pinned: it stays put when the length changes
    if sched.name in ("onecycle", "triangle") and not sched.warmup_epochs:
        changes["schedule.warmup_epochs"], plan.pinned_rise = sched.pct_start * plan.epochs, True
    rcfg = evolve(rcfg, changes)
    # the correction waits for the schedule's length-free steps (the rise; at most half the run), so it is
    # measured on steps of the run itself
    at = min(length_free(rcfg, plan.steps), plan.epochs * plan.steps // 2)
    plan.correct_at = int(at) if at >= 1 else 0
    return rcfg, rdata, plan


def _last_stage_epochs(cfg: Config, plan: Plan, budget: float) -> int:
    """Staged training (fine-tuning): the planned epochs less the earlier stages' go to the last stage.
    Every step is timed as the whole network's, so head-only stages make the run end a little early."""
    before = sum(st.epochs for st in cfg.stages[:-1])
    if plan.epochs <= before:
        raise UserError(f"time budget {clock(budget)}: {plan.epochs} epochs fit here, and the stages before the "
                        f"last take {before}; give more time, or fewer epochs to the earlier stages")
    return plan.epochs - before


def _measure_rung(cfg: Config, data: DataBundle, hw: Hardware, started: float) -> dict | None:
    """The rung's timings from the probe cache (budget/cache.py) when a run on this machine, with this
    torch, code and config, timed them before; else a probe session's, then cached. None when the rung
    runs out of accelerator memory (the next rung may fit). Rank 0 looks: every rank times, or none."""
    found, note, path = None, "train.probe_cache=false", None
    if hw.dist.main:
        key = probe_cache.key(cfg, data, device=hw.device, precision=hw.precision, world=hw.dist.world,
                              compiled=hw.compile_wanted)
        path = probe_cache.file_for(cfg, key)
        if cfg.train.probe_cache:
            found, note = probe_cache.lookup(path, key)
    found = distributed.broadcast_object(found, hw.dist)
    if found is not None:
        return {**found, "timing": "cached", "cache_file": str(path), "cache_note": ""}
    measured = _probe(cfg, data, hw, started)
    if measured is None or not hw.dist.main:
        return measured
    if (measured["others_cpu"] or 0) > SHARED:  # a later run alone would plan from steps too slow
        failed = "not cached: timed while other processes kept the CPUs busy"
    else:
        failed = probe_cache.store(path, key, measured)
    if failed:
        note, path = "; ".join(filter(None, [note, failed])), None
    return {**measured, "timing": "probed", "cache_file": None if path is None else str(path), "cache_note": note}


def _probe(cfg: Config, data: DataBundle, hw: Hardware, started: float) -> dict | None:
    try:
        return measure(build_session(cfg, data, device=hw.device, precision=hw.precision, dist=hw.dist,
                                     compile_wanted=hw.compile_wanted, started=started))
    except torch.OutOfMemoryError:
        return None
    finally:  # the probe's model, optimiser and activations go before the next rung is built
        gc.collect()
        if hw.device.type == "cuda":
            torch.cuda.empty_cache()


def _costs(measured: dict) -> dict:
    """What choose() plans from: a rung's timings without the record of how they were taken."""
    return {k: measured[k] for k in ("step_s", "epoch_overhead_s", "finish_s", "full_steps")}


def _source(measured: dict) -> dict:
    """Where a rung's timings came from, for budget.json: probed here or cached, its file, why not cached."""
    return {k: measured.get(k) for k in ("timing", "cache_file", "cache_note")}


def _decide(budget: float, used: float, ladder: list[dict], need: int, rungs: list) -> tuple[int, Plan] | str:
    """Every timed rung scored with the same time used so far: (the chosen index, its plan), or the
    one line that refuses the budget. Rank 0 decides; the result is broadcast."""
    rows, plans = [], {}
    for i, (rcfg, rdata, measured) in enumerate(rungs):
        row = {"rung": i, "set": ladder[i] if ladder else {}, "step_s": None, "epochs": 0, "steps": 0}
        if measured is None or isinstance(measured, str):
            row["note"] = measured or "out of memory"
        else:
            sizes = lambda e, c=rcfg, d=rdata: epoch_sizes(c, d, e)  # noqa: E731
            step = measured["step_s"].get(sizes(1)[0]) or measured["step_s"][max(measured["step_s"])]
            row.update(step_s=measured["step_s"], epoch_s=measured["full_steps"] * step + measured["epoch_overhead_s"],
                       timed_steps=measured["timed_steps"], others_cpu=measured["others_cpu"], **_source(measured))
            try:
                plans[i] = choose(budget, used, **_costs(measured), sizes=sizes)
                plans[i].infer_s, plans[i].finish_images = measured["infer_s"], measured["finish_images"]
                row.update(epochs=plans[i].epochs, steps=plans[i].steps)
            except UserError as e:
                row["too_small"] = str(e)
        rows.append(row)
    if not plans:
        return _refusal(budget, ladder, rows)
    chosen = pick_rung({i: p.epochs for i, p in plans.items()}, need)
    later = "not timed (an earlier rung fits)" if all(isinstance(m, dict) for _, _, m in rungs) else "not timed"
    rows += [{"rung": j, "set": ladder[j], "step_s": None, "note": later} for j in range(len(rows), len(ladder))]
    plans[chosen].rungs = rows
    return chosen, plans[chosen]


def pick_rung(epochs: dict[int, int], need: int) -> int:
    """The ladder's rule, on each timed rung's planned epochs (rung index -> epochs, in ladder order):
    the first rung that gets ``need`` epochs, else the one that gets the most (a tie: the earlier)."""
    first = next((i for i, e in epochs.items() if e >= need), None)
    return first if first is not None else max(epochs, key=epochs.get)


def _refusal(budget: float, ladder: list[dict], rows: list[dict]) -> str:
    """No rung fits one epoch: one line (without a ladder, choose()'s own line with its figures)."""
    if not ladder:
        return rows[0].get("too_small") or "the model does not fit in the accelerator's memory: lower train.batch_size"
    timed = [r for r in rows if r["step_s"] is not None]
    if not timed:
        return "no rung of train.ladder fits in the accelerator's memory: add a smaller rung or lower train.batch_size"
    fastest = min(timed, key=lambda r: r["epoch_s"])
    return (f"time budget {clock(budget)} is too small for one epoch of any rung of train.ladder: the fastest, "
            f"rung {fastest['rung']} ({_rung_text(fastest['set'])}), takes ~{fastest['epoch_s']:.0f} s an epoch "
            "here before the test and report; give a longer train.time_budget or add a smaller rung")


def choose(budget: float, used: float, *, step_s: dict[int, float], epoch_overhead_s: float, finish_s: float,
           full_steps: int, sizes) -> Plan:
    """The most steps that fit: E epochs of k steps, E - 1 full ones at least. ``sizes(E)`` gives
    each epoch's training side in px for an E-epoch run; ``step_s`` is keyed by px."""
    available = MARGIN * (budget - used) - finish_s
    best = None
    for epochs in range(1, 100_000):
        per_step = sum(step_cost(step_s, z) for z in sizes(epochs))
        k = min(full_steps, math.floor((available - epochs * epoch_overhead_s) / per_step))
        if k < full_steps:
            if best is None:
                need = used + (full_steps * per_step + epoch_overhead_s + finish_s) / MARGIN
                raise UserError(
                    f"time budget {clock(budget)} is too small for one epoch here: {full_steps} steps take "
                    f"~{full_steps * per_step:.0f} s, validating ~{epoch_overhead_s:.0f} s, the test and report "
                    f"~{finish_s:.0f} s, and {used:.0f} s went to loading and timing; give train.time_budget="
                    f"{clock(math.ceil(need))} or more, or lower data.image_size or model size")
            if epochs * k > best[0] * best[1]:
                best = (epochs, k)
            break
        best = (epochs, k)
    epochs, k = best
    predicted = used + sum(step_cost(step_s, z) for z in sizes(epochs)) * k + epochs * epoch_overhead_s + finish_s
    return Plan(budget, used, step_s, epoch_overhead_s, finish_s, epochs, k, full_steps, predicted)


def step_cost(step_s: dict[int, float], size: int) -> float:
    """s a step at ``size`` px, linear in pixels between the measured sizes (keys: px)."""
    lo, hi = min(step_s), max(step_s)
    return step_s[hi] if hi == lo else step_s[lo] + (step_s[hi] - step_s[lo]) * (size**2 - lo**2) / (hi**2 - lo**2)
