"""MkDocs hook: the reference pages, generated from the code at every build so they cannot drift.

- reference/config.md: every config key from src/resnetlab/config/schema.py (type, default, choices, range
  rule, and the comment written on or above the field in the source);
- reference/cli.md: the --help of `resnetlab` and of every subcommand, from resnetlab.cli.build_parser();
- benchmarks.md: a table per script from benchmarks/results/*.json (written by benchmarks/results.py).

None of these files is kept in docs/: a hand-written copy stops the build.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import html
import io
import json
import logging
import os
import sys
import tokenize
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.reference")

GENERATED = ("reference/config.md", "reference/cli.md", "benchmarks.md")


def _root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _import_resnetlab(root: Path) -> None:
    """Use the checkout's package even where it is not installed (a plain `mkdocs build`)."""
    src = str(root / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


# --- markdown helpers ---------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Plain text (with `code` spans kept) safe inside a markdown table cell."""
    out = []
    for i, part in enumerate(text.split("`")):
        if i % 2:  # inside a code span
            out.append("<code>" + html.escape(part).replace("|", "&#124;") + "</code>")
        else:
            part = html.escape(part, quote=False)
            for ch in "\\*_[]":
                part = part.replace(ch, "\\" + ch)
            out.append(part.replace("|", "&#124;"))
    return "".join(out)


def _code(text: str) -> str:
    return "<code>" + html.escape(text).replace("|", "&#124;") + "</code>"


# --- config reference ---------------------------------------------------------------------------------------


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """{(class name, field name): the comment on the field's lines, after the comment lines right above it}."""
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    out = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above, line = [], item.lineno - 1
            while line in comments and line not in code_lines:  # comment-only lines just above
                above.insert(0, comments[line])
                line -= 1
            on = [comments[n] for n in range(item.lineno, item.end_lineno + 1) if n in comments]
            out[node.name, item.target.id] = " ".join(above + on)
    return out


def annotations(source: str) -> dict[tuple[str, str], str]:
    """{(class name, field name): the type as written in the source}."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    out[node.name, item.target.id] = ast.unparse(item.annotation)
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if dataclasses.is_dataclass(value) or (isinstance(value, list) and value and dataclasses.is_dataclass(value[0])):
        return ""
    return json.dumps(value)


def _row(key: str, cls: type, f: dataclasses.Field, comments, types) -> str:
    choices = f.metadata.get("choices")
    allowed = ", ".join(_code(c) for c in choices) if choices else _cell(f.metadata.get("must", ""))
    return (f"| {_code(key)} | {_code(types.get((cls.__name__, f.name), ''))} | {_code(_default(f))} | {allowed} "
            f"| {_cell(comments.get((cls.__name__, f.name), ''))} |")


HEADER = "| key | type | default | allowed | what it does |\n|---|---|---|---|---|"


def config_page(root: Path) -> str:
    _import_resnetlab(root)
    from resnetlab.config import all_keys
    from resnetlab.config.schema import SECTIONS, Config, StageConfig

    schema = root / "src" / "resnetlab" / "config" / "schema.py"
    source = schema.read_text(encoding="utf-8")
    comments, types = field_comments(source), annotations(source)
    top = {f.name: f for f in dataclasses.fields(Config)}
    lines = ["# Config reference", "",
             "Every key a recipe or a `key=value` override can set. This page is generated from",
             "`src/resnetlab/config/schema.py` each time the site is built; the last column is the comment",
             "written beside the field in the source. `resnetlab train --help-config` prints the same keys.",
             "A unique leaf name works on the command line (`lr=0.05` for `optim.lr=0.05`); an unknown key",
             "stops with the nearest valid one.", ""]
    sections: dict[str, list[str]] = {}
    for key in all_keys():
        section, _, name = key.rpartition(".")
        if section:
            cls = SECTIONS[section]
            f = {g.name: g for g in dataclasses.fields(cls)}[name]
        else:
            cls, f = Config, top[key]
        sections.setdefault(section or "top level", []).append(_row(key, cls, f, comments, types))
    for section, rows in sections.items():
        lines += [f"## {section}", "", HEADER, *rows, ""]
    lines += ["## stages", "",
              "Each item of the `stages` list is one phase of staged training (see "
              "[Training](../training.md#staged-fine-tuning)). Its keys:", "", HEADER]
    lines += [_row(f"stages[].{f.name}", StageConfig, f, comments, types) for f in dataclasses.fields(StageConfig)]
    return "\n".join(lines) + "\n"


# --- CLI reference ------------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    """[("train", parser), ("data", parser), ("data inspect", parser), ...] in the parser's order."""
    out = []
    for name, sub in _subparsers(parser).items():
        out.append((prefix + name, sub))
        out += cli_commands(sub, prefix + name + " ")
    return out


def cli_page(root: Path) -> str:
    _import_resnetlab(root)
    from resnetlab.cli import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # the same line breaks on every machine
    try:
        parser = build_parser()
        blocks = [("resnetlab", parser.format_help())]
        blocks += [(f"resnetlab {name}", sub.format_help()) for name, sub in cli_commands(parser)]
    finally:
        if columns is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = columns
    lines = ["# CLI reference", "",
             "The `--help` of every command, generated from the argument parsers each time the site is built.",
             "`python -m resnetlab` is the same command as `resnetlab`.", ""]
    for title, text in blocks:
        lines += [f"## {title}", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


# --- benchmarks ---------------------------------------------------------------------------------------------


def _value(figure: dict) -> str:
    value, unit = figure.get("value"), figure.get("unit") or ""
    if value is None:
        return ""
    text = f"{value:,}" if isinstance(value, int) else f"{value:,.6g}" if isinstance(value, float) else str(value)
    return text + unit if unit in ("%", "x") else f"{text} {unit}".strip()


def _n(n) -> str:
    return f"{n:,}" if isinstance(n, int) else "" if n is None else str(n)


def benchmarks_page(results: Path) -> str:
    """The Benchmarks page from every *.json in ``results``: one table per script, a row per figure."""
    lines = ["# Benchmarks", "",
             "Figures measured by the scripts in `benchmarks/`, read from `benchmarks/results/*.json` each time",
             "the site is built. Each row names the hardware class it ran on and the command that reproduces it.",
             ""]
    files = sorted(results.glob("*.json")) if results.is_dir() else []
    groups: dict[str, list[dict]] = {}
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning(f"benchmarks: {path.name} is not a results file: {e}")
            continue
        if not isinstance(record, dict):
            log.warning(f"benchmarks: {path.name} is not a results file: not a JSON object")
            continue
        groups.setdefault(record.get("script") or path.stem, []).append(record)
    if not groups:
        return "\n".join(lines + ["No results recorded yet.", ""])
    for script, records in sorted(groups.items()):
        lines += [f"## {script}", "",
                  "| name | metric | value | n | hardware | date | commit | command |",
                  "|---|---|---|---|---|---|---|---|"]
        details = []
        for r in sorted(records, key=lambda r: (str(r.get("name", "")), str(r.get("date", "")))):
            for fig in r.get("figures") or []:
                metric = _cell(str(fig.get("metric", "")))
                if fig.get("how"):
                    metric += f" ({_cell(str(fig['how']))})"
                lines.append(f"| {_cell(str(r.get('name', '')))} | {metric} | {_value(fig)} | {_n(fig.get('n'))} "
                             f"| {_cell(str(r.get('hardware', '')))} | {_cell(str(r.get('date', '')))} "
                             f"| {_code(str(r.get('commit', '')))} | {_code(str(r.get('command', '')))} |")
            if r.get("hardware_detail"):
                details.append(f"- {_cell(str(r.get('name', '')))}: {_cell(str(r['hardware_detail']))}")
        lines.append("")
        if details:
            lines += ["Hardware:", "", *details, ""]
    return "\n".join(lines)


# --- the hook -----------------------------------------------------------------------------------------------


def pages(root: Path) -> dict[str, str]:
    return {"reference/config.md": config_page(root), "reference/cli.md": cli_page(root),
            "benchmarks.md": benchmarks_page(root / "benchmarks" / "results")}


def on_files(files: Files, config) -> Files:
    root = _root(config)
    for uri, content in pages(root).items():
        if files.get_file_from_path(uri) is not None:
            raise PluginError(f"docs/{uri} is generated at build time (docs/hooks/reference.py): delete the file")
        files.append(File.generated(config, uri, content=content))
    return files
