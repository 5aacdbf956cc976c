"""Typed run configuration: dataclasses, loaded from YAML, changed by ``key=value``.

A recipe is a YAML file with the sections below (any may be left out). On the
command line ``optim.lr=0.05`` sets one value; a leaf name that is unique
(``lr=0.05``, ``epochs=3``) works too. Unknown keys and wrong types are errors
that name the nearest valid key, so a typo never silently trains the default.

The sections are in ``schema.py``, key names and value coercion in ``keys.py``, the checks
of a whole config in ``checks.py``; this module loads, overrides and saves, and is where
the rest of the package imports them from.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from resnetlab.config.checks import parse_duration, resolve_stages, rung_config, validate, yield_to_command_line
from resnetlab.config.keys import all_keys, key_type, resolve_key, section_items, set_value
from resnetlab.config.schema import (
    AugmentConfig,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    StageConfig,
    TrainConfig,
)
from resnetlab.errors import UserError
from resnetlab.io import atomic_write_text, read_yaml

__all__ = ["AugmentConfig", "Config", "DataConfig", "ModelConfig", "OptimConfig", "ScheduleConfig", "StageConfig",
           "TrainConfig", "all_keys", "apply_overrides", "config_from_dict", "evolve", "key_type", "list_recipes",
           "load_config", "parse_duration", "recipe_path", "resolve_key", "resolve_stages", "rung_config",
           "save_config", "set_value", "update_config", "validate", "yield_to_command_line"]

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"recipe file {path} does not exist")
        return path
    if (RECIPE_DIR / f"{name_or_path}.yaml").is_file():
        return RECIPE_DIR / f"{name_or_path}.yaml"
    near = difflib.get_close_matches(name_or_path, list_recipes(), n=1)
    hint = f"did you mean '{near[0]}'? " if near else ""
    raise UserError(f"unknown recipe '{name_or_path}': {hint}`resnetlab recipes` lists them")


def load_config(recipe: str | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                notes: list[str] | None = None) -> Config:
    """Defaults, then the recipe (a shipped name or a YAML path), then ``key=value`` overrides, which
    the recipe's planning never replaces (yield_to_command_line: what stepped aside for them is
    appended to ``notes``, one line each)."""
    cfg = Config()
    if recipe:
        path = recipe_path(recipe)
        raw = read_yaml(path) or {}
        if not isinstance(raw, dict):
            raise UserError(f"{path} must hold a mapping of sections (data:, model:, ...)")
        update_config(cfg, raw, source=str(path))
    said = yield_to_command_line(cfg, set(apply_overrides(cfg, overrides)))
    if notes is not None:
        notes.extend(said)
    return validate(cfg)


def config_from_dict(raw: dict[str, Any]) -> Config:
    cfg = Config()
    update_config(cfg, raw, source="config")
    return validate(cfg)


def evolve(cfg: Config, changes: dict[str, Any], *, source: str = "plan",
           last_stage_epochs: int | None = None) -> Config:
    """A new validated config: ``cfg`` with ``changes`` (full keys -> values) set, and optionally the
    last stage's epochs. ``cfg`` is left as it was."""
    out = cfg.thawed()
    for key, value in changes.items():
        set_value(out, key, value, source=source)
    if last_stage_epochs is not None:
        out.stages[-1].epochs = last_stage_epochs
    return validate(out)


def update_config(cfg: Config, raw: dict[str, Any], *, source: str) -> None:
    for key, value in section_items(raw):
        set_value(cfg, key, value, source=source)


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Apply ``key=value`` strings; returns the full keys that were set."""
    done = []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like key=value (e.g. optim.lr=0.05)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        done.append(set_value(cfg, key.strip(), value, source="command line"))
    return done


def save_config(cfg: Config, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
