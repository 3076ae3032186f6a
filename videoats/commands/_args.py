"""Options the subcommands share (`--json`, `--verbose`, `--config` and `KEY VALUE` overrides)."""
from __future__ import annotations

import argparse
from typing import List

from ..runtime import PRECISIONS


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


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    """`--compile`, `--precision` and `--device`, the command-line faces of TEST.COMPILE, TEST.PRECISION and
    DEVICE."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"),
                        help="where the model runs (DEVICE; default auto: the GPU when there is one)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (TEST.COMPILE); with ATS.MODE static ATS compiles as one graph")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="autocast for the forward passes (TEST.PRECISION; default auto: bf16 on CUDA, fp32 on "
                             "the CPU); dense and ATS models get the same")


def inference_overrides(args) -> List[str]:
    """The config overrides `add_inference_args`' flags stand for."""
    opts = ["TEST.COMPILE", "True"] if args.compile else []
    opts += ["DEVICE", args.device] if getattr(args, "device", None) else []
    return opts + (["TEST.PRECISION", args.precision] if args.precision else [])
