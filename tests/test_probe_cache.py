"""The time budget's probe cache (budget/cache.py): a second plan with the same key reads the timings
and builds no probe session; another torch, machine or config, a corrupt file, train.probe_cache=false
and a timing taken beside a busy job are timed anew."""

import json
import time
from pathlib import Path

import pytest
import torch

from resnetlab.budget import cache as probe_cache
from resnetlab.budget import plan as budget_plan
from resnetlab.budget.plan import Hardware, plan_budget
from resnetlab.data import build_data
from resnetlab.run.prepare import prepare
from resnetlab.train.distributed import Dist
from tests.conftest import tiny_config

FAKE = {"epoch_overhead_s": 0.5, "finish_s": 1.0, "infer_s": 1e-4, "finish_images": 1000, "timed_steps": {16: 30}}


@pytest.fixture
def probes(monkeypatch):
    """Counts the probe sessions built and timed; their timings are FAKE's, a step ``probes["step_s"]``
    and other processes' CPU share ``probes["others"]``: a plan takes a second, not the probe's 3 s a rung."""
    counts = {"built": 0, "timed": 0, "step_s": 0.01, "others": 0.0}
    built = budget_plan.build_session

    def build(*args, **kwargs):
        counts["built"] += 1
        return built(*args, **kwargs)

    def measure(s):
        counts["timed"] += 1
        return {**FAKE, "step_s": {16: counts["step_s"]}, "full_steps": len(s.loaders["train"]),
                "others_cpu": counts["others"]}

    monkeypatch.setattr(budget_plan, "build_session", build)
    monkeypatch.setattr(budget_plan, "measure", measure)
    return counts


def plan(folders, tmp_path, *extra):
    cfg = tiny_config(folders, tmp_path / "runs", "train.time_budget=1m", f"data.cache_dir={tmp_path / 'cache'}",
                      *extra)
    hw = Hardware(torch.device("cpu"), "fp32", Dist(0, 1, 0), False)
    return plan_budget(cfg, build_data(cfg, progress=False), hw, started=time.monotonic())[2]


def test_a_second_plan_with_the_same_key_reads_the_cache_and_times_nothing(class_folders, tmp_path, probes):
    first = plan(class_folders, tmp_path)
    assert probes["built"] == probes["timed"] == 1
    row = first.rungs[0]
    assert row["timing"] == "probed" and row["cache_note"] == ""
    path = tmp_path / "cache" / "probe" / row["cache_file"].rsplit("/", 1)[-1]
    assert str(path) == row["cache_file"] and json.loads(path.read_text())["measured"]["step_s"] == {"16": 0.01}
    # the same recipe again, with another seed, run name and budget: none of them changes a step's time
    again = plan(class_folders, tmp_path, "seed=3", "train.name=other", "train.time_budget=2m")
    assert probes["built"] == probes["timed"] == 1  # no probe session was built or timed
    assert again.rungs[0]["timing"] == again.timing == "cached" and again.rungs[0]["cache_file"] == str(path)
    assert again.step_s == first.step_s == {16: 0.01} and again.full_steps == first.full_steps
    assert f"(from the probe cache, {path})" in again.line()
    # a key that sets a step's time is another file
    plan(class_folders, tmp_path, "train.batch_size=4")
    assert probes["timed"] == 2 and len(list((tmp_path / "cache" / "probe").iterdir())) == 2


@pytest.mark.parametrize("part", ["torch", "hardware", "code"])
def test_a_timing_from_another_torch_machine_or_code_is_never_used(class_folders, tmp_path, probes, monkeypatch,
                                                                    part):
    first = plan(class_folders, tmp_path)
    if part == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif part == "hardware":
        monkeypatch.setattr(probe_cache, "hardware_class", lambda device, precision: "CPU of another machine")
    else:
        monkeypatch.setattr(probe_cache, "_source_digest", lambda: "0" * 16)
    other = plan(class_folders, tmp_path)
    assert probes["timed"] == 2 and other.rungs[0]["timing"] == "probed"
    assert other.rungs[0]["cache_file"] != first.rungs[0]["cache_file"]  # each keeps its own file
    stored = json.loads(Path(other.rungs[0]["cache_file"]).read_text())["key"]
    assert stored["software"]["torch"] == ("9.9.9" if part == "torch" else str(torch.__version__))
    assert ("another machine" in stored["machine"]["class"]) == (part == "hardware")


def _negative_step(path: str) -> bytes:
    stored = json.loads(Path(path).read_text())  # its own key, with a step of -1 s: a plan from it would be nonsense
    return json.dumps({**stored, "measured": {**stored["measured"], "step_s": {"16": -1.0}}}).encode()


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b'{"key": {}, "measured": {}}',
                                     b'{"key": null}', b"[]", _negative_step])
def test_a_corrupt_cache_file_is_timed_anew_and_rewritten(class_folders, tmp_path, probes, capsys, content):
    first = plan(class_folders, tmp_path)
    path = first.rungs[0]["cache_file"]
    Path(path).write_bytes(content(path) if callable(content) else content)
    again = plan(class_folders, tmp_path)
    assert "Traceback" not in capsys.readouterr().err
    assert probes["timed"] == 2 and again.rungs[0]["timing"] == "probed"
    assert again.rungs[0]["cache_note"].startswith("its cache file was")
    assert json.loads(Path(path).read_text())["measured"]["full_steps"] == first.full_steps  # rewritten whole
    assert plan(class_folders, tmp_path).rungs[0]["timing"] == "cached" and probes["timed"] == 2


def test_a_cache_that_cannot_be_read_or_written_costs_a_timing_never_the_run(class_folders, tmp_path, probes):
    path = plan(class_folders, tmp_path).rungs[0]["cache_file"]
    (tmp_path / "cache" / "probe" / path.rsplit("/", 1)[-1]).unlink()
    (tmp_path / "cache" / "probe" / path.rsplit("/", 1)[-1]).mkdir()  # a folder where the file goes
    again = plan(class_folders, tmp_path)
    assert probes["timed"] == 2 and again.rungs[0]["cache_file"] is None
    note = again.rungs[0]["cache_note"]
    assert note.startswith("its cache file was unreadable (IsADirectoryError); not cached: could not write"), note


def test_probe_cache_false_times_anew_and_stores_the_new_timing(class_folders, tmp_path, probes):
    path = plan(class_folders, tmp_path).rungs[0]["cache_file"]
    probes["step_s"] = 0.02  # the machine is slower now (a driver, a BIOS setting): the user times it anew
    forced = plan(class_folders, tmp_path, "train.probe_cache=false")
    assert probes["timed"] == 2 and forced.rungs[0]["timing"] == "probed"
    assert "train.probe_cache=false" in forced.line() and forced.rungs[0]["cache_file"] == path
    assert plan(class_folders, tmp_path).step_s == {16: 0.02} and probes["timed"] == 2


def test_a_timing_taken_beside_a_busy_job_is_not_cached(class_folders, tmp_path, probes):
    probes["others"] = 0.5  # other processes kept half the CPUs busy while the steps were timed
    shared = plan(class_folders, tmp_path)
    assert shared.rungs[0]["cache_file"] is None
    assert shared.rungs[0]["cache_note"] == "not cached: timed while other processes kept the CPUs busy"
    assert not (tmp_path / "cache" / "probe").exists() or not any((tmp_path / "cache" / "probe").iterdir())
    probes["others"] = 0.1  # under the 20% threshold: kept
    assert plan(class_folders, tmp_path).rungs[0]["cache_file"] is not None
    assert plan(class_folders, tmp_path).rungs[0]["timing"] == "cached" and probes["timed"] == 2


def test_budget_json_and_the_ladder_table_say_where_each_rungs_timing_came_from(class_folders, tmp_path, monkeypatch):
    """The real probe, twice: the second run builds no probe session, and its run folder says why."""
    monkeypatch.setattr("resnetlab.budget.probe.busy_cpu_s", lambda: -1.0)  # the shared CPU's share: unknown, cached
    built = []
    real = budget_plan.build_session
    monkeypatch.setattr(budget_plan, "build_session", lambda *a, **k: built.append(1) or real(*a, **k))
    extra = ("train.time_budget=1m", f"data.cache_dir={tmp_path / 'cache'}",
             "train.ladder=[{model.filters: [8, 8, 16, 16]}]")
    first = prepare(tiny_config(class_folders, tmp_path / "a", *extra), run_name="t")
    second = prepare(tiny_config(class_folders, tmp_path / "b", *extra), run_name="t")
    assert len(built) == 1
    a, b = (json.loads((s.run_dir / "budget.json").read_text())["rungs"][0] for s in (first, second))
    assert a["timing"] == "probed" and b["timing"] == "cached" and a["cache_file"] == b["cache_file"]
    assert b["step_s"] == a["step_s"] and b["timed_steps"] == a["timed_steps"]
    plans = [json.loads((s.run_dir / "budget.json").read_text()) for s in (first, second)]
    assert [p["timing"] for p in plans] == [first.plan.timing, second.plan.timing] == ["probed", "cached"]
    table = second.plan.table()
    assert "every rung: timings from the probe cache" in table[0] and table[1].endswith("(cached)")
    assert "cached" not in "\n".join(first.plan.table())
