"""Config keys: full and short names (nearest-name hints), declared types, and setting a value
with its type checked and coerced (YAML and the command line give strings, ints and lists)."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from resnetlab.config.schema import SECTIONS, Config
from resnetlab.errors import UserError


def all_keys() -> list[str]:
    keys = []
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(SECTIONS[f.name])]
        else:
            keys.append(f.name)
    return keys


def section_items(raw: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A recipe's nested sections as (full key, value) pairs: {"optim": {"lr": 1}} -> [("optim.lr", 1)]."""
    out = []
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key in SECTIONS:
            out += section_items(v, key + ".")
        else:
            out.append((key, v))
    return out


def resolve_key(key: str) -> str:
    keys = all_keys()
    if key in keys:
        return key
    leaves = [k for k in keys if k.rsplit(".", 1)[-1] == key]
    if len(leaves) == 1:
        return leaves[0]
    if len(leaves) > 1:
        raise UserError(f"'{key}' is ambiguous: write one of {', '.join(leaves)}")
    near = difflib.get_close_matches(key, keys + [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.5)
    hint = f"; did you mean '{resolve_key(near[0])}'?" if near else ""
    raise UserError(f"unknown config key '{key}'{hint} (`resnetlab train --help-config` lists all keys)")


def key_type(key: str) -> Any:
    """The declared type of a config key (``optim.lr`` -> float), after resolving short names."""
    full = resolve_key(key)
    if "." not in full:
        return typing.get_type_hints(Config)[full]
    section, name = full.split(".")
    return typing.get_type_hints(SECTIONS[section])[name]


def set_value(cfg: Config, key: str, value: Any, *, source: str) -> str:
    full = resolve_key(key)
    if "." not in full:
        target, name = cfg, full
    else:
        section, name = full.split(".")
        target = getattr(cfg, section)
    f = {g.name: g for g in dataclasses.fields(target)}[name]
    hints = typing.get_type_hints(type(target))
    setattr(target, name, _coerce(value, hints[name], full, source))
    choices = f.metadata.get("choices")
    if choices and (bad := unknown_choice(getattr(target, name), choices)) is not None:
        near = difflib.get_close_matches(str(bad), choices, n=1, cutoff=0.4)
        hint = f"did you mean '{near[0]}'? " if near else ""
        what = f"{full}={value!r}" if bad == getattr(target, name) else f"{full}: {bad!r}"
        raise UserError(f"{what} ({source}) is not one of: {', '.join(choices)}; {hint}".rstrip("; "))
    return full


def unknown_choice(value: Any, choices: tuple) -> Any:
    """The value, or a list key's first item (train.log_to), that is not one of ``choices``; None when all are."""
    return next((v for v in (value if isinstance(value, list) else [value]) if v not in choices), None)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    bad = UserError(f"{key}={value!r} ({source}) should be {_type_name(tp)}")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        # 'none' as well as YAML's null: model.weights=none reads as no weights, not a weight name
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} ({source}) should be a list of mappings")
        return [_dataclass_item(v, typing.get_args(tp)[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, str):  # classes=12,13,14,17 on a command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, item, key, source) for v in value]
    if tp is dict:  # a ladder rung: its keys are checked where the rung is applied (config/checks.py)
        if isinstance(value, dict):
            return dict(value)
        raise UserError(f"{key}={value!r} ({source}) should be a mapping of config keys to values, "
                        "e.g. {model.filters: [16, 32, 64, 128]}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, bool):  # YAML reads compile=true as a bool; choices then judge the text
            return str(value).lower()
        if isinstance(value, (str, int, float)):
            return str(value)
        raise bad
    raise bad


def _dataclass_item(value: Any, cls: type, key: str, source: str) -> Any:
    """A mapping -> ``cls``, each field coerced; unknown fields suggest the nearest one."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise UserError(f"{key} ({source}) should be a mapping of {cls.__name__} fields")
    item, hints = cls(), typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for name, v in value.items():
        if name not in names:
            near = difflib.get_close_matches(str(name), names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise UserError(f"{key} ({source}) has unknown field '{name}'{hint} (fields: {', '.join(names)})")
        setattr(item, name, _coerce(v, hints[name], f"{key}.{name}", source))
    return item


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}.get(
        tp, "null" if tp is type(None) else str(tp)
    )
