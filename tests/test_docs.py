"""The documentation site: `mkdocs build --strict` passes, the reference pages generated at build time
cover every config key and command, the tutorial pages' figures load in a real browser, and the README
stays short."""

from __future__ import annotations

import argparse
import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ("gtsrb-resnet34-finetune", "gtsrb4-unknown-resnet34", "intel-resnet34-onecycle", "cifar10-resnet50",
             "preact-resnet")
SAMPLE = {"script": "benchmarks/recipe_run.py", "name": "fashion-mnist-fast",
          "command": "python benchmarks/recipe_run.py fashion-mnist-fast", "commit": "6b124cb", "hardware": "CPU bf16",
          "hardware_detail": "Intel Xeon, 2 cores", "date": "2026-12-07",
          "figures": [{"metric": "test top-1", "value": 94.59, "unit": "%", "n": 10000,
                       "how": "checkpoint chosen on val (n=5,000)"}]}


def _hook():
    """docs/hooks/reference.py, imported as MkDocs imports it (by path)."""
    spec = importlib.util.spec_from_file_location("docs_hooks_reference", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(page: Path) -> str:
    """A built page's text without tags, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    site = tmp_path_factory.mktemp("docs") / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    return proc, site


@pytest.fixture(scope="module")
def site(build):
    proc, site = build
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{proc.stderr[-3000:]}")
    return site


def test_site_builds_strict(build):
    proc, site = build
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (site / "index.html").is_file()


def test_reference_pages_are_generated_not_written():
    for uri in _hook().GENERATED:
        assert not (ROOT / "docs" / uri).exists(), f"docs/{uri} is generated at build time; delete the file"


def test_config_reference_lists_every_key(site):
    import dataclasses

    from resnetlab.config import all_keys
    from resnetlab.config.schema import StageConfig

    page = (site / "reference" / "config.html").read_text(encoding="utf-8")
    keys = all_keys() + [f"stages[].{f.name}" for f in dataclasses.fields(StageConfig)]
    missing = [key for key in keys if f"<td><code>{key}</code></td>" not in page]
    assert missing == []
    # the source comment and the field's metadata come along: a choice list, a range rule, a unit
    text = _text(site / "reference" / "config.html")
    assert "shuffle, balanced" in text and "must be in [0, 1)" in text and "degrees" in text


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    names = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                names += [prefix + name, *_commands(sub, prefix + name + " ")]
    return names


def test_cli_reference_lists_every_command(site):
    from resnetlab.cli import COMMANDS, build_parser

    commands = _commands(build_parser())
    assert set(COMMANDS) <= set(commands) and "data inspect" in commands
    text = _text(site / "reference" / "cli.html")
    missing = [name for name in commands if f"usage: resnetlab {name}" not in text]
    assert missing == []


def test_tutorial_pages_are_built_with_their_figures(site):
    for name in TUTORIALS:
        page = site / "tutorials" / f"{name}.html"
        assert page.is_file(), name
        images = re.findall(r'<img[^>]+src="([^"]+)"', page.read_text(encoding="utf-8"))
        pngs = [src for src in images if src.endswith(".png")]
        assert pngs, f"{name}: no figure"
        for src in pngs:
            assert (page.parent / src).resolve().is_file(), src
    for png in (ROOT / "docs" / "img").glob("*.png"):
        assert png.stat().st_size < 300_000, f"{png.name} is over 300 KB"


def test_benchmarks_generator_makes_a_row_per_figure(tmp_path):
    hook = _hook()
    assert "No results recorded yet." in hook.benchmarks_page(tmp_path / "missing")
    assert "No results recorded yet." in hook.benchmarks_page(tmp_path)
    (tmp_path / "fashion-mnist-fast.json").write_text(json.dumps(SAMPLE))
    page = hook.benchmarks_page(tmp_path)
    assert "No results recorded yet." not in page and "## benchmarks/recipe_run.py" in page
    (row,) = [line for line in page.splitlines() if line.startswith("| fashion-mnist-fast |")]
    for part in ("94.59%", "10,000", "CPU bf16", "6b124cb", "2026-12-07", "python benchmarks/recipe_run.py"):
        assert part in row, (part, row)


def test_tutorial_figures_load_in_chromium(site, tmp_path):
    """Every <img> of every tutorial page, opened from disk in headless Chromium, has loaded (naturalWidth > 0)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium)")
    from websockets.sync.client import connect

    from tests.browser import _devtools_port

    profile = tmp_path / "profile"
    chrome = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                               f"--user-data-dir={profile}", "about:blank"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = {}
    try:
        port = None
        for _ in range(600):  # up to 30 s for a cold Chromium on a slow machine
            port = _devtools_port(profile)
            if port:
                break
            time.sleep(0.05)
        assert port, "Chromium did not start in 30 s"
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read())
        target = next(t for t in targets if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            ids = iter(range(1, 10**6))

            def call(method, **params):
                n = next(ids)
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    message = json.loads(ws.recv(timeout=30))
                    if message.get("id") == n:
                        return message.get("result", {})

            def evaluate(expression):
                return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

            for name in TUTORIALS:
                call("Page.navigate", url=(site / "tutorials" / f"{name}.html").as_uri())
                ready = "document.readyState === 'complete' && [...document.images].every(i => i.complete)"
                for _ in range(600):
                    if evaluate(f"location.href.endsWith('{name}.html') && {ready}"):
                        break
                    time.sleep(0.05)
                found[name] = evaluate("[...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")
    finally:
        chrome.terminate()
        chrome.wait(timeout=10)
    for name, images in found.items():
        assert any(src.endswith(".png") for src, _ in images), f"{name}: no figure on the page"
        assert [src for src, width in images if not width] == [], f"{name}: images that did not load"
    assert set(found) == set(TUTORIALS)


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_every_figure_in_the_readme_results_table_is_in_a_results_file():
    """The README's one table quotes benchmarks/results/*.json, written by the script that measured it: each
    figure with a unit (%, s) and each n in a row is a figure of a results file whose command the row gives."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")][1:]
    results = [json.loads(p.read_text()) for p in sorted((ROOT / "benchmarks" / "results").glob("*.json"))]
    for row in rows:
        command = re.findall(r"`([^`]+)`", row.rsplit("|", 2)[-2])
        matching = [r for r in results if command and command[0] in r["command"]]
        assert matching, f"no results file has the command of README row {row!r}"
        figures = [f for r in matching for f in r["figures"]]
        for value, unit in re.findall(r"(\d[\d,]*(?:\.\d+)?) ?(%|s)\b", row):
            assert any(f["unit"] == unit and f["value"] == float(value.replace(",", "")) for f in figures), \
                f"README row {row!r}: {value}{unit} is in no results file of its command"
        for n in re.findall(r"n=(\d[\d,]*)", row):
            assert any(f["n"] == int(n.replace(",", "")) for f in figures), f"README row {row!r}: n={n} unrecorded"
