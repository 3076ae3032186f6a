"""Options the subcommands share (`--json`, `--verbose`, `--config` and `KEY VALUE` overrides)."""
from __future__ import annotations

import argparse


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options every subcommand has."""
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    parser.add_argument("--verbose", action="store_true",
                        help="also show info lines and the video libraries' own log messages (FFmpeg, decord)")
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
