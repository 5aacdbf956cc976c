"""`resnetlab compare RUN RUN ...`: one self-contained page that sets runs side by side.

Training curves overlaid, the config keys that differ, the metrics with their n, per-class
F1 against the first run, and which run is better on each metric, with a note when the gap
is within binomial noise for that n (two standard errors of the difference of two
proportions: 1.96 * sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2)). Multi-label runs are compared on
mAP, F1 and exact match instead of top-1 (and per-class AP). Built only from run folders.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from resnetlab import run_folder as rf
from resnetlab.config import section_items
from resnetlab.errors import UserError
from resnetlab.evaluate.report import inline_png, page, pct, table
from resnetlab.evaluate.runs import is_run, read_history
from resnetlab.evaluate.task import SingleLabel, task_named
from resnetlab.io import atomic_write_text, make_folder, read_yaml

IGNORED_KEYS = ("train.name", "train.out_dir")  # differ between any two runs by construction
METRICS = [("best val top-1", "val", "best_val_top1"), ("test top-1", "test", "top1"), ("test top-5", "test", "top5"),
           ("test balanced accuracy", "test", "balanced_accuracy"), ("test macro-F1", "test", "macro_f1")]
# multi-label runs (evaluate/multilabel.py); a row no run has is left out, so either kind reads as before
ML_METRICS = [("best val mAP (macro)", "val", "best_val_map"), ("test mAP (macro)", "test", "map_macro"),
              ("test mAP (micro)", "test", "map_micro"), ("test F1 (micro)", "test", "f1_micro"),
              ("test exact match", "test", "exact_match")]
NOT_PROPORTIONS = {"best_val_map", "map_macro", "map_micro", "f1_micro"}  # no binomial noise estimate applies
VAL_KEYS = {"best_val_top1": "val_top1", "best_val_map": "val_map"}  # the epoch record each best comes from


@dataclass
class Run:
    path: Path
    config: dict
    history: list[dict]
    classes: list[str]
    test: dict = field(default_factory=dict)
    val_n: int | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def metric(self, split: str, key: str) -> tuple[float | None, int | None]:
        if split == "val":
            values = [h[VAL_KEYS[key]] for h in self.history if h.get(VAL_KEYS[key]) is not None]
            return (max(values), self.val_n) if values else (None, None)
        return self.test.get(key), self.test.get("n")


def load_run(path: Path) -> Run:
    path = Path(path)
    if not is_run(path):
        raise UserError(f"{path} is not a resnetlab run folder (no config.yaml and env.json)")
    data = rf.read_optional_json(path, rf.DATA, {})
    return Run(path, dict(section_items(read_yaml(path / rf.CONFIG) or {})), read_history(path),
               rf.read_optional_json(path, rf.CLASSES, []),
               rf.read_optional_json(path, rf.eval_name("test"), {}),
               data.get("sizes", {}).get("val"))


def differing_keys(runs: list[Run]) -> list[str]:
    keys = sorted(set().union(*(r.config for r in runs)))
    return [k for k in keys if k not in IGNORED_KEYS and len({repr(r.config.get(k)) for r in runs}) > 1]


def within_noise(a: float, n_a: int, b: float, n_b: int) -> tuple[bool, float]:
    """(is |a - b| within two standard errors?, that margin), for accuracies over n_a and n_b images."""
    margin = 1.96 * math.sqrt(a * (1 - a) / max(n_a, 1) + b * (1 - b) / max(n_b, 1))
    return abs(a - b) <= margin, margin


def verdict(runs: list[Run], split: str, key: str) -> str:
    scored = sorted(((r.metric(split, key), r.name) for r in runs if r.metric(split, key)[0] is not None),
                    key=lambda x: -x[0][0])
    if len(scored) < 2:
        return "-"
    ((best, n_best), name), ((second, n_second), _) = scored[0], scored[1]
    if key in NOT_PROPORTIONS:  # an average of per-class curves, not a share of images
        return f"{name} (no noise estimate for this metric)"
    if n_best and n_second:
        noise, margin = within_noise(best, n_best, second, n_second)
        if noise:
            return f"{name}, but within binomial noise (±{100 * margin:.1f} pt at these n)"
    return name


def class_warnings(runs: list[Run]) -> list[str]:
    first = runs[0]
    return [f"{r.name} has other classes than {first.name} ({len(r.classes)} vs {len(first.classes)}): "
            "metrics compare different tasks" for r in runs[1:] if r.classes != first.classes]


def _curves(runs: list[Run]) -> str:
    from resnetlab.plotting import plt, png_bytes

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    shown = set()
    for r in runs:
        epochs = [h["epoch"] for h in r.history]
        axes[0].plot(epochs, [h["train_loss"] for h in r.history], "o-", ms=3, label=r.name)
        key = "val_map" if any("val_map" in h for h in r.history) else "val_top1"  # multi-label: macro mAP
        if any(key in h for h in r.history):
            shown.add(key)
            values = [100 * (h.get(key) if h.get(key) is not None else float("nan")) for h in r.history]
            axes[1].plot(epochs, values, "o-", ms=3, label=r.name + (" (mAP)" if key == "val_map" else ""))
    axes[0].set(title="train loss", xlabel="epoch")
    titles = {"val_top1": "val top-1", "val_map": "val mAP macro"}
    axes[1].set(title=(" / ".join(t for k, t in titles.items() if k in shown) or titles["val_top1"]) + " (%)",
                xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return inline_png(png_bytes(fig, dpi=100), "training curves")


def _metrics_table(runs: list[Run]) -> str:
    rows = []
    for label, split, key in METRICS + ML_METRICS:
        cells = []
        for r in runs:
            value, n = r.metric(split, key)
            cells.append("-" if value is None else f"{pct(value)} (n={n})")
        if any(c != "-" for c in cells):
            rows.append([label, *cells, verdict(runs, split, key)])
    return table(["metric", *(r.name for r in runs), "better"], rows)


def _per_class_key(runs: list[Run]) -> tuple[str, str]:
    """(per-class field, its name): the runs' task's when they share one (AP for multi-label), else F1."""
    keys = {task_named(r.test.get("task")).per_class for r in runs}
    return keys.pop() if len(keys) == 1 else SingleLabel.per_class


def _f1_table(runs: list[Run]) -> str:
    key, label = _per_class_key(runs)
    if not all(r.test for r in runs):
        return f'<p class="note">per-class {label} needs eval_test.json in every run</p>'
    base = runs[0]
    names = list(dict.fromkeys(c for r in runs for c in r.test.get("per_class", {})))
    rows = []
    for c in names:
        first = base.test["per_class"].get(c, {}).get(key)
        deltas = []
        for r in runs[1:]:
            value = r.test["per_class"].get(c, {}).get(key)
            deltas.append("-" if value is None or first is None else f"{100 * (value - first):+.1f} pt")
        rows.append([c, pct(first), *deltas])
    return table(["class", f"{label} {base.name}", *(f"Δ {r.name}" for r in runs[1:])], rows[:200])


def build_compare(paths: list[Path], out: Path) -> tuple[Path, list[str]]:
    """Write the comparison page to ``out``; returns it and the warnings (e.g. differing classes)."""
    if len(paths) < 2:
        raise UserError("compare needs two runs or more")
    runs = [load_run(p) for p in paths]
    warnings = class_warnings(runs)
    keys = differing_keys(runs)
    parts = [f"<h1>resnetlab: {len(runs)} runs compared</h1>",
             f'<p class="note">written {time.strftime("%Y-%m-%d %H:%M:%S")}; runs: '
             + ", ".join(html.escape(str(r.path)) for r in runs) + "</p>"]
    parts += [f'<p class="note">warning: {html.escape(w)}</p>' for w in warnings]
    parts.append('<h2 id="curves">Training curves</h2>' + _curves(runs))
    parts.append('<h2 id="metrics">Metrics</h2>' + _metrics_table(runs))
    parts.append('<h2 id="config">Config keys that differ</h2>'
                 + (table(["key", *(r.name for r in runs)], [[k, *(str(r.config.get(k)) for r in runs)] for k in keys])
                    if keys else '<p class="note">the configs are the same (apart from name and folder)</p>'))
    parts.append(f'<h2 id="classes">Per-class {_per_class_key(runs)[1]} against {html.escape(runs[0].name)}</h2>'
                 + _f1_table(runs))
    atomic_write_text(make_folder(Path(out).parent) / Path(out).name, page("resnetlab compare", parts))
    return out, warnings
