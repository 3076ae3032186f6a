"""The `videoats` command: one subcommand per job, each with `--help` and `--json`.

A subcommand module in `videoats.commands` defines `register(subparsers)`, which adds its parser and sets
`func` (returns a JSON-able dict) and optionally `human` (turns that dict into text for people).
Errors a user can fix surface as one line on stderr and exit code 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from typing import List, Optional, Tuple

from .errors import VideoATSError

# module names in videoats.commands, in the order `videoats --help` lists them
COMMAND_MODULES = ["demo", "models", "convert", "flops", "eval_cmd", "train_cmd", "infer", "visualize",
                   "data_cmds", "plot"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videoats",
        description="Adaptive Token Sampling for video transformers (TimeSformer, X-ViT).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"videoats.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"videoats.commands.{name}":
                continue  # a command not built yet
            raise
        module.register(sub)
    return parser


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options every subcommand has."""
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    return parser


def add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """`--config FILE` plus `KEY VALUE` overrides anywhere on the line, as PySlowFast tools take them."""
    parser.add_argument("--config", "--cfg", dest="config", required=required, help="YAML config file")
    accept_overrides(parser)


def accept_overrides(parser: argparse.ArgumentParser) -> None:
    """This subcommand takes `KEY VALUE` config overrides (`main` hands them over as `args.opts`)."""
    parser.set_defaults(takes_overrides=True)
    parser.epilog = ((parser.epilog + "\n") if parser.epilog else "") + \
        "Config overrides: KEY VALUE pairs anywhere on the line, e.g. TEST.BATCH_SIZE 4 ATS.ENABLE True"


def split_overrides(argv: List[str]) -> Tuple[List[str], List[str]]:
    """Take `KEY VALUE` config overrides out of the command line, wherever they stand.

    A word is a key when it looks like `SECTION.KEY` (or a top-level key such as `SEED`) of the config and
    is not an existing file; the word after a key is its value whatever it looks like. So overrides can
    sit before, between or after options and videos, and argparse only sees the rest.
    """
    from .config import get_cfg

    sections = set(get_cfg().keys())
    rest, opts, i = [], [], 0
    while i < len(argv):
        word = argv[i]
        if _KEY.match(word) and word.split(".")[0] in sections and not os.path.exists(word):
            opts += argv[i:i + 2]  # a key without a value is reported by the config loader
            i += 2
        else:
            rest.append(word)
            i += 1
    return rest, opts


_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*$")


def emit(args, result: dict, human=None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, default=_json_default))
    elif human is not None:
        text = human(result)
        if text:
            print(text)
    else:
        print(json.dumps(result, indent=2, default=_json_default))


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    rest, opts = split_overrides(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(rest)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if opts and not getattr(args, "takes_overrides", False):
        parser.error(f"{args.command} takes no config overrides (got {' '.join(opts)})")
    args.opts = opts
    try:
        result = args.func(args)
    except VideoATSError as e:
        print(f"videoats {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"videoats {args.command}: interrupted", file=sys.stderr)
        return 130
    if result is None:
        return 0
    emit(args, result, getattr(args, "human", None))
    return int(result.get("exit_code", 0)) if isinstance(result, dict) else 0


if __name__ == "__main__":
    sys.exit(main())
