"""The `videoats` command: one subcommand per job, each with `--help` and `--json`.

A subcommand module in `videoats.commands` defines `register(subparsers)`, which adds its parser and sets
`func` (returns a JSON-able dict) and optionally `human` (turns that dict into text for people).
Errors a user can fix surface as one line on stderr and exit code 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import List, Optional

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
    """`--config FILE` plus trailing `KEY VALUE` overrides, as PySlowFast tools take them."""
    parser.add_argument("--config", "--cfg", dest="config", required=required, help="YAML config file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. TEST.BATCH_SIZE 4 ATS.ENABLE True")


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
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
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
