"""The documentation builds strictly and covers the product: every command, every exported name, every
config key, every zoo entry with what is really checked; the README stays short and factual."""
import argparse
import ast
import html
import inspect
import os
import re
import subprocess
import sys

import pytest

import videoats
from videoats import zoo
from videoats.cli import build_parser
from videoats.config import _CHOICES, get_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
sys.path.insert(0, os.path.join(DOCS, "hooks"))
import config_reference  # noqa: E402  (the MkDocs hook that generates the config page)


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`mkdocs build --strict` into a temporary folder: {page path: its text without tags}."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr  # warnings, broken links, missing pages fail
    assert "WARNING" not in run.stderr, run.stderr
    pages = {}
    for folder, _, files in os.walk(out):
        for name in files:
            if name.endswith(".html"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    raw = f.read()
                pages[os.path.relpath(path, out)] = (raw, html.unescape(re.sub(r"<[^>]+>", "", raw)))
    return pages


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def _public_names():
    """What `import videoats` exports: `__all__` when the package declares it, else every public attribute
    that is not a submodule (submodules are reached through the names they export)."""
    names = getattr(videoats, "__all__", None)
    if names is None:
        names = [n for n in dir(videoats) if not n.startswith("_") and not inspect.ismodule(getattr(videoats, n))]
    return sorted(names)


def test_every_command_is_documented(site):
    text = " ".join(t for _, t in site.values())
    commands = _commands()
    assert {"eval", "infer", "train", "flops", "demo"} <= set(commands)  # the parser was really read
    missing = [c for c in commands if f"videoats {c}" not in text]
    assert not missing, f"commands the documentation never mentions as `videoats NAME`: {missing}"
    table = _read("docs", "commands.md")
    assert not [c for c in commands if f"| `videoats {c}` |" not in table], "add it to docs/commands.md"


def test_every_exported_name_has_an_api_entry(site):
    """mkdocstrings renders `::: videoats.NAME` as an anchor with that id: a name merely mentioned in prose
    does not count, nor does a directive that failed to resolve (the strict build would have failed)."""
    raw = " ".join(r for r, _ in site.values())
    names = _public_names()
    assert {"create_model", "load_checkpoint", "apply_ats"} <= set(names)
    missing = [n for n in names if f'id="videoats.{n}"' not in raw]
    assert not missing, f"exported names with no entry in docs/api.md: {missing}"


def test_config_reference_has_every_key_with_its_default_and_meaning(site):
    page = next(text for path, (_, text) in site.items() if path.startswith("config"))
    notes = config_reference.meanings(config_reference.config_source())
    rows = config_reference._flat(get_cfg())
    assert len(rows) > 50
    generated = config_reference.reference(config_reference.config_source())
    for key, value in rows:
        assert key in page, key
        meaning = notes.get(key, "")
        assert meaning, f"{key} has no comment in config.py: write its one-line meaning beside it"
        words = set(re.findall(r"[a-z]+", meaning.lower())) - {c.lower() for c in _CHOICES.get(key, ())}
        assert words, f"{key}'s comment only lists its choices: say what it means"
        line = next(l for l in generated.splitlines() if l.startswith(f"| `{key}` |"))
        default = line.split("|")[2].strip().strip("`")
        parsed = None if default == "null" else ast.literal_eval(default)
        assert parsed == (list(value) if isinstance(value, tuple) else value) and type(parsed) is type(value), key
    for key, choices in _CHOICES.items():
        line = next(l for l in generated.splitlines() if l.startswith(f"| `{key}` |"))
        allowed = re.split(r"(?<!\\)\|", line)[3]  # cells split at unescaped pipes
        assert re.findall(r"`([^`]+)`", allowed) == list(choices), key


def test_zoo_table_says_what_each_entry_checks_and_its_class_order():
    """docs/models.md must not claim a check the zoo does not make, nor hide one it makes."""
    page = _read("docs", "models.md")
    for name in zoo.ZOO:
        row = next((l for l in page.splitlines() if l.startswith(f"| `{name}` |")), None)
        assert row, f"zoo entry {name} missing from the table in docs/models.md"
        kinds = zoo.verification(name).values()
        assert ("publisher's SHA-256" in row) == any("publisher states" in k for k in kinds), name
        assert ("prefix in its name" in row) == any("prefix in its name" in k for k in kinds), name
        assert ("recorded" in row) == any("recorded on the first download" in k for k in kinds), name
        order = row.split("|")[-2]
        assert (zoo.entry(name).labels or "unknown") in order or "ImageNet" in order, name


def test_readme_is_short_factual_and_links_into_the_docs():
    readme = _read("README.md")
    lines = readme.splitlines()
    assert len(lines) <= 160
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)
    assert not re.search(r"(?<![\w/&])#\d+", prose), "issue numbers do not belong in the README"
    assert not re.search(r"\b(issue|re-measured|before the)\b", prose, re.I), "history belongs in the docs"
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links and all(os.path.exists(os.path.join(ROOT, l)) for l in links), links
    assert "pip install -e . && videoats demo" in readme
    assert "pip install -e '.[test]' && python -m pytest -q tests" in readme
    assert "install -q -e '.[test]'" in _read(".ci", "run")  # CI installs what the README's test command does
    for name in zoo.ZOO:
        assert f"`{name}`" in readme, f"zoo entry {name} missing from the README's model table"


def test_no_history_or_issue_numbers_outside_the_benchmarks_page():
    for name in sorted(os.listdir(DOCS)):
        if name.endswith(".md") and name != "benchmarks.md":
            prose = re.sub(r"```.*?```", "", _read("docs", name), flags=re.S)
            assert not re.search(r"(?<![\w/&])#\d+", prose), name
            assert not re.search(r"\bissue #?\d|\bre-measured\b", prose, re.I), name


def test_readme_demo_table_is_what_the_demo_prints():
    """The README's headline table is the demo's output; the demo's numbers are fixed by the shipped
    checkpoint and lossless data, so the README and the benchmark page must quote the same lines."""
    readme, bench = _read("README.md"), _read("docs", "benchmark.md")
    rows = [l for l in readme.splitlines() if re.match(r"^(dense|ATS)\s+\d", l)]
    assert len(rows) == 2 and all(r in bench for r in rows)


def test_no_internal_issue_numbers_in_what_users_read():
    """Configs, tools' help and the package's messages speak of the product, not of its tracker: no
    "issue #N", "(#N)" or "#N's" (an external source is named with its repository, e.g. decord#373)."""
    pattern = re.compile(r"\bissues? #?\d|\(#\d+\)|(?<![\w/])#\d+'s")
    found = []
    for top in ("videoats", "configs", "tools"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith((".py", ".yaml", ".sh")):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as f:
                        found += [f"{os.path.relpath(path, ROOT)}:{i}" for i, line in enumerate(f, 1)
                                  if pattern.search(line)]
    assert not found, found
