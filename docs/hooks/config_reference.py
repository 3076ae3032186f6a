"""MkDocs hook: the config reference page is generated from `videoats/config.py` at every build.

Each key's default comes from `get_cfg()`, its allowed values from the checks `validate()` runs
(`_CHOICES`, `_RANGES`), and its one line of meaning from the comment beside it in `config.py`. A page
written by hand would drift from the code; this one cannot, and `tests/test_docs.py` fails when a key has
no meaning. The marker line `<!-- config-reference -->` in `docs/config.md` is replaced by the tables.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Tuple

from videoats import config as config_module

MARKER = "<!-- config-reference -->"
_KEY_LINE = re.compile(r"^_C\.([A-Z0-9_.]+)\s*=\s*(?P<value>[^#]*?)\s*(?:#\s*(?P<comment>.*))?$")


def meanings(source: str) -> Dict[str, str]:
    """{KEY: the comment beside `_C.KEY = ...`} for every key assignment in config.py's source."""
    out = {}
    for line in source.splitlines():
        m = _KEY_LINE.match(line.strip())
        if m and "CfgNode()" not in m.group("value"):
            out[m.group(1)] = (m.group("comment") or "").strip()
    return out


def _flat(node, prefix: str = "") -> List[Tuple[str, object]]:
    rows = []
    for key, value in node.items():
        if isinstance(value, config_module.CfgNode):
            rows += _flat(value, prefix + key + ".")
        else:
            rows.append((prefix + key, value))
    return rows


def _default(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return f'"{value}"' if value else '""'
    return repr(list(value)) if isinstance(value, (list, tuple)) else repr(value)


def allowed(key: str, value) -> str:
    """What `validate()` accepts for `key` (its choices or range), else the type the loader enforces."""
    if key in config_module._CHOICES:
        return " \\| ".join(f"`{c}`" for c in config_module._CHOICES[key])
    if key in config_module._RANGES:
        return config_module._RANGES[key][2]
    if isinstance(value, bool):
        return "True \\| False"
    if isinstance(value, str):
        return "a path" if ("FILE" in key or "DIR" in key or "ANNOTATION" in key or "PREFIX" in key) else "text"
    return "any"


def reference(source: str) -> str:
    """The Markdown tables, one per section, in the order config.py declares the keys."""
    notes = meanings(source)
    sections: Dict[str, List[str]] = {}
    for key, value in _flat(config_module.get_cfg()):
        section = key.split(".")[0] if "." in key else "top level"
        cell = notes.get(key, "").replace("|", "\\|")
        sections.setdefault(section, []).append(
            f"| `{key}` | `{_default(value)}` | {allowed(key, value)} | {cell} |")
    parts = []
    for section, rows in sections.items():
        parts += [f"## {section}", "", "| key | default | allowed | meaning |", "|---|---|---|---|", *rows, ""]
    return "\n".join(parts)


def config_source() -> str:
    with open(config_module.__file__, encoding="utf-8") as f:
        return f.read()


def on_page_markdown(markdown: str, page, config, files):  # noqa: ARG001 (the MkDocs hook signature)
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference(config_source()))


def on_config(config):  # rebuild when config.py changes under `mkdocs serve`
    watch = config.get("watch")
    if watch is not None:
        path = os.path.dirname(config_module.__file__)
        if path not in watch:
            watch.append(path)
    return config
