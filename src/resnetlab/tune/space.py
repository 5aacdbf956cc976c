"""A search space written in config keys, as YAML:

    optim.lr: log [1e-3, 1]            # log-uniform between the two
    optim.weight_decay: log [1e-5, 1e-3]
    augment.rotation: [0, 20]          # uniform (whole numbers where the key is an integer)
    train.batch_size: int [64, 256]
    model.name: [resnet9, cifar_resnet18]   # a choice: strings, or more than two values
    schedule.name: choice [cosine, onecycle]
    train.epochs: 5                    # fixed for every trial

Keys are checked like any override: a typo names the nearest valid key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from resnetlab.config import Config, key_type, resolve_key
from resnetlab.errors import UserError
from resnetlab.io import read_yaml

_FORM = re.compile(r"^\s*(log|int|float|choice)\s*(\[.*\])\s*$")


@dataclass(frozen=True)
class Param:
    key: str  # the full config key
    kind: str  # float, log, int or choice
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")


def override(key: str, value: Any) -> str:
    """``key=value`` as the command line writes it (lists as JSON, which YAML reads back)."""
    return f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}"


def shown(key: str, value: Any) -> str:
    """``key=value`` for people: floats to 4 significant digits."""
    return f"{key}={value:.4g}" if isinstance(value, float) else override(key, value)


def parse_space(raw: dict, source: str) -> tuple[list[Param], list[str]]:
    """(free parameters, fixed overrides) from a mapping of config key -> range, choice or value."""
    if not isinstance(raw, dict):
        raise UserError(f"{source} must map config keys to ranges, e.g. 'optim.lr: log [1e-3, 1]'")
    params, fixed = [], []
    for key, spec in raw.items():
        full = resolve_key(str(key))
        if full == "stages":
            raise UserError(f"{source}: stages cannot be searched; search their keys' defaults instead")
        kind, values = None, spec
        if isinstance(spec, str) and (m := _FORM.match(spec)):
            kind, values = m.group(1), yaml.safe_load(m.group(2))
        if isinstance(values, list):
            params.append(_param(full, kind, values, source))
        elif kind is None:
            fixed.append(override(full, spec))
    return params, fixed


def _number(v: Any) -> Any:
    """YAML reads 1e-3 (no dot) as a string: a string that is a number becomes one."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _param(key: str, kind: str | None, values: list, source: str) -> Param:
    values = [_number(v) for v in values]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if kind == "choice" or (kind is None and not (numeric and len(values) == 2)):
        if len(values) < 2:
            raise UserError(f"{source}: {key} offers {len(values)} choice; give two or more, or a fixed value")
        return Param(key, "choice", choices=tuple(json.dumps(v) if isinstance(v, list) else v for v in values))
    if not numeric or len(values) != 2 or not values[0] < values[1]:
        raise UserError(f"{source}: {key} needs [low, high] with low < high, got {values}")
    if kind == "log" and values[0] <= 0:
        raise UserError(f"{source}: {key}: a log range must be positive, got {values}")
    if kind is None:
        kind = "int" if key_type(key) is int else "float"
    return Param(key, kind, float(values[0]), float(values[1]))


def default_space(cfg: Config) -> dict:
    """Around the recipe's own values: the rate, weight decay and label smoothing, which matter most."""
    lr, wd = cfg.optim.lr, max(cfg.optim.weight_decay, 1e-5)
    return {"optim.lr": f"log [{lr / 10:.3g}, {lr * 3:.3g}]",
            "optim.weight_decay": f"log [{wd / 10:.3g}, {wd * 10:.3g}]",
            "optim.label_smoothing": [0.0, 0.2]}


def load_space(path: Path | None, cfg: Config) -> tuple[list[Param], list[str], dict]:
    """Parameters, fixed overrides, and the raw space (kept in study.json)."""
    raw = read_yaml(path) if path is not None else default_space(cfg)
    params, fixed = parse_space(raw or {}, str(path) if path else "the default space")
    if not params:
        raise UserError(f"{path or 'the search space'} has no free parameter: give a range or a choice, "
                        "e.g. 'optim.lr: log [1e-3, 1]'")
    return params, fixed, raw
