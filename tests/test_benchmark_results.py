"""benchmarks/results.py: one JSON file a measurement, every field filled, figures kept as given."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "results.py"


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("benchmark_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIGURES = [{"metric": "test top-1", "value": 94.59, "unit": "%", "n": 10000,
            "how": "checkpoint chosen on val (n=5,000)"},
           {"metric": "wall time, whole command", "value": 531.2, "unit": "s", "n": 1}]


def test_record_writes_every_field(results, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT.parent / "recipe_run.py"), "fashion-mnist-fast"])
    path = results.record("benchmarks/recipe_run.py", "fashion-mnist-fast", FIGURES, hardware="CPU bf16",
                          out_dir=tmp_path)
    assert path.parent == tmp_path
    assert re.fullmatch(r"recipe_run-fashion-mnist-fast-cpu-bf16-\d{4}-\d{2}-\d{2}\.json", path.name)
    saved = json.loads(path.read_text())
    assert set(saved) == {"script", "name", "command", "commit", "hardware", "hardware_detail", "date", "figures"}
    assert saved["script"] == "benchmarks/recipe_run.py" and saved["name"] == "fashion-mnist-fast"
    assert saved["command"] == "python benchmarks/recipe_run.py fashion-mnist-fast"  # the real argv
    assert saved["hardware"] == "CPU bf16" and saved["hardware_detail"]
    assert re.fullmatch(r"[0-9a-f]{4,}(-dirty)?|unknown", saved["commit"])
    assert path.name.endswith(f"-{saved['date']}.json")
    assert saved["figures"] == FIGURES  # values and n exactly as given, extra keys kept
    # a second measurement the same day gets its own file
    again = results.record("benchmarks/recipe_run.py", "fashion-mnist-fast", FIGURES, hardware="CPU bf16",
                           command="python x", out_dir=tmp_path)
    assert again != path and again.name.startswith(path.stem) and json.loads(again.read_text())["command"] == "python x"


def test_default_hardware_is_a_class(results, tmp_path):
    saved = json.loads(results.record(__file__, "t", FIGURES[:1], out_dir=tmp_path).read_text())
    assert re.fullmatch(r"CPU (bf16|fp32)( \(.+\))?|GPU \(.+\)", saved["hardware"])
    assert saved["script"] == "tests/test_benchmark_results.py"


@pytest.mark.parametrize("bad, message", [
    ({"metric": "test top-1", "value": 94.59, "unit": "%"}, r"figure 0 \('test top-1'\) has no n"),
    ({"metric": "test top-1", "value": 94.59, "n": 10}, "has no unit"),
    ({"metric": "test top-1", "value": float("nan"), "unit": "%", "n": 10}, "finite number"),
    ({"metric": "test top-1", "value": 94.59, "unit": "%", "n": 0}, "whole number >= 1"),
])
def test_record_rejects_incomplete_figures(results, tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        results.record("benchmarks/recipe_run.py", "x", [bad], hardware="CPU bf16", out_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_seeds_ab_pairs_the_variants_by_seed():
    """benchmarks/seeds_ab.py's summary: each variant's mean over the seeds, and B - A paired by seed."""
    spec = importlib.util.spec_from_file_location("seeds_ab", SCRIPT.parent / "seeds_ab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    val = {"A": [95.0, 95.4, 94.9], "B": [95.3, 95.6, 95.4]}  # by seed 0, 1, 2
    scores = {v: {seed: {"best val top-1": (val[v][seed], 5000), "test top-1": (94.0 + seed, 10000)}
                  for seed in range(3)} for v in "AB"}
    figures = {f["metric"]: f for f in module.summary(scores, [0, 1, 2], {"A": [], "B": ["model.name=airnet"]})}
    assert list(figures) == [f"{m}, {x}" for m in ("best val top-1", "test top-1") for x in ("A", "B", "B - A")]
    assert figures["best val top-1, A"]["value"] == 95.1 and figures["best val top-1, A"]["n"] == 3
    assert "n=5,000 images; A: the recipe as it is" in figures["best val top-1, A"]["how"]
    assert "B: model.name=airnet" in figures["best val top-1, B"]["how"]
    diff = figures["best val top-1, B - A"]
    # differences 0.3, 0.2, 0.5: mean 0.333, sd 0.153, standard error sd / sqrt(3)
    assert diff["value"] == 0.333 and diff["unit"] == "points" and "standard error 0.088" in diff["how"]
    assert figures["test top-1, B - A"]["value"] == 0.0
