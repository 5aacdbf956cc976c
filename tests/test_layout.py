"""The package's architecture, checked: layers import only downwards, no import cycles, and
`import resnetlab` / `resnetlab --help` stay light (no torch, torchvision, matplotlib, MLflow or W&B)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "resnetlab"
# data flows one way: a module may import from its own layer and the layers before it
# (train: the math of one run; budget: the time budget's planner and correction; run: a run's life)
LAYERS = ["base", "models", "data", "evaluate", "train", "budget", "run", "tune", "deploy", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if module == "resnetlab.__main__":  # `python -m resnetlab`: the command line's entry point
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "base"


def imports(path: Path, *, type_checking: bool = False) -> set[str]:
    """resnetlab modules imported anywhere in the file (functions too); those under `if TYPE_CHECKING:`
    only with ``type_checking`` (an annotation-only import still ties the two modules together)."""
    tree = ast.parse(path.read_text())
    skip = set() if type_checking else {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("resnetlab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("resnetlab"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def graph(*, type_checking: bool = False) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path, type_checking=type_checking) if m in modules and m != name}
            for name, path in modules.items()}


def test_layers_import_only_downwards():
    bad = [f"{a} ({layer(a)}) imports {b} ({layer(b)})" for a, targets in graph(type_checking=True).items()
           for b in targets
           if LAYERS.index(layer(b)) > LAYERS.index(layer(a))]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges = graph(type_checking=True)
    # package __init__ files are entered by every import of a submodule: count their edges too
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_at_most_eight_top_level_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 9, top  # __main__ and _version besides the ~8 the layout allows


HEAVY = ("torch", "torchvision", "matplotlib", "mlflow", "wandb")  # none loads before a command needs it


@pytest.mark.parametrize("code", [
    "import resnetlab",
    "import resnetlab.cli as c; c.build_parser()",
    "from resnetlab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
])
def test_light_imports(code):
    check = code + f"\nimport sys\nheavy = [m for m in {HEAVY!r} if m in sys.modules]\nassert not heavy, heavy"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_lazy_names_resolve():
    import resnetlab

    assert resnetlab.fit.__module__ == "resnetlab.run.fit"
    assert resnetlab.Predictor.__module__ == "resnetlab.deploy.predictor"
    with pytest.raises(AttributeError):
        resnetlab.no_such_name  # noqa: B018


_IMPORT_EACH = """
import importlib.util, sys, traceback
failed = []
for i, path in enumerate(sys.argv[1:]):
    spec = importlib.util.spec_from_file_location(f"bench{i}", path)
    try:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    except BaseException:
        failed.append(path + ":\\n" + traceback.format_exc(limit=-3))
sys.exit("\\n".join(failed) or None)
"""


def test_benchmark_scripts_import():
    """Benchmarks are not run by the suite, but each must still import against today's library: all in
    one fresh process (one torch import, ~3 s, instead of one for each of 14 scripts), a failure named
    by its script."""
    scripts = sorted(str(p) for p in (PACKAGE.parents[1] / "benchmarks").glob("*.py"))
    assert len(scripts) >= 10
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *scripts], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def test_run_folder_names_are_spelled_in_one_module():
    """Every file name of the run folder's format is a constant of resnetlab/run_folder.py; the other
    modules use those names, so the format has one home (string constants only: docs may mention them)."""
    from resnetlab import run_folder

    names = {v for k, v in vars(run_folder).items() if k.isupper() and isinstance(v, str)}
    assert {"status.json", "split.csv", "calibration.json", "metrics.jsonl", "last.pt"} <= names
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "run_folder.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if node.value in names or node.value.startswith(("eval_", "snapshot-")):
                    spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not spelled, "\n".join(spelled)


_BUDGET_FREE_RUN = """
import sys
from pathlib import Path
from tests.conftest import tiny_config, write_class_folders
from resnetlab import fit, prepare
tmp = Path(sys.argv[1])
fit(prepare(tiny_config(write_class_folders(tmp / "folders"), tmp / "runs", "train.progress=false"), run_name="t"))
budget = sorted(m for m in sys.modules if m.startswith("resnetlab.budget"))
assert not budget, budget
"""


def test_a_run_without_a_time_budget_imports_none_of_the_budgets_code(tmp_path):
    done = subprocess.run([sys.executable, "-c", _BUDGET_FREE_RUN, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=PACKAGE.parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "t" / "last.pt").is_file() or any((tmp_path / "runs").rglob("last.pt"))


def test_train_holds_only_the_math_of_a_run():
    """The run's life (files, progress, signals, finishing) is run/'s, the time budget budget/'s."""
    train = {p.stem for p in (PACKAGE / "train").glob("*.py")}
    assert train == {"distributed", "ema", "loop", "lr_find", "precompute", "schedules", "session", "sizes", "stages",
                     "step"}
    lines = sum(len(p.read_text().splitlines()) for p in (PACKAGE / "budget").glob("*.py"))
    # planner, probe, its cache, and the corrections (the first, and the late moves of the end)
    assert lines <= 880, f"the time budget's code is {lines} lines"


def test_ruff_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "benchmarks"], capture_output=True,
                          text=True, timeout=120, cwd=PACKAGE.parents[1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
