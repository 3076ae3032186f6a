"""Options the subcommands share (`--json`, `--verbose`, `--config` and `KEY VALUE` overrides)."""
from __future__ import annotations

import argparse
from typing import List

from ..ats.core import SELECTIONS
from ..inference.shipped import config_path
from ..errors import VideoATSError
from ..runtime import PRECISIONS


def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options every subcommand has."""
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    parser.add_argument("--verbose", action="store_true",
                        help="also show info lines and the video libraries' own log messages (FFmpeg, decord)")
    return parser


def add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """`--config FILE` plus `KEY VALUE` overrides anywhere on the line, as PySlowFast tools take them."""
    parser.add_argument("--config", "--cfg", dest="config", required=required, type=config_path,
                        help="YAML config file, or a config shipped with the package by name "
                             "(e.g. synthetic/benchmark; `videoats models --configs` lists them)")
    accept_overrides(parser)


def accept_overrides(parser: argparse.ArgumentParser) -> None:
    """This subcommand takes `KEY VALUE` config overrides (`main` hands them over as `args.opts`)."""
    parser.set_defaults(takes_overrides=True)
    parser.epilog = ((parser.epilog + "\n") if parser.epilog else "") + \
        "Config overrides: KEY VALUE pairs anywhere on the line, e.g. TEST.BATCH_SIZE 4 ATS.ENABLE True"


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    """`--compile`, `--precision`, `--device`, `--ats-selection` and `--ats-seed`, the command-line faces of
    TEST.COMPILE, TEST.PRECISION, DEVICE, ATS.SELECTION and ATS.SEED."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"),
                        help="where the model runs (DEVICE; default auto: the GPU when there is one)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (TEST.COMPILE); with ATS.MODE static ATS compiles as one graph")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="autocast for the forward passes (TEST.PRECISION; default auto: bf16 on CUDA, fp32 on "
                             "the CPU); dense and ATS models get the same")
    add_selection_args(parser)


def add_selection_args(parser) -> None:
    """`--ats-selection` and `--ats-seed`: which rule picks the tokens at the ATS blocks."""
    parser.add_argument("--ats-selection", choices=SELECTIONS,
                        help="how the ATS blocks pick tokens (ATS.SELECTION): inverse_transform (ATS, default), "
                             "top_k (the budget's highest-scoring tokens), random (the budget's count, at random), "
                             "evit (the most attended tokens plus one fused token per frame) or tome (bipartite "
                             "token merging)")
    parser.add_argument("--ats-seed", type=int, metavar="N", help="which tokens --ats-selection random draws "
                                                                   "(ATS.SEED, default 0)")


def inference_overrides(args) -> List[str]:
    """The config overrides `add_inference_args`' flags stand for."""
    opts = ["TEST.COMPILE", "True"] if args.compile else []
    opts += ["DEVICE", args.device] if getattr(args, "device", None) else []
    opts += ["ATS.SELECTION", args.ats_selection] if args.ats_selection else []
    opts += ["ATS.SEED", str(args.ats_seed)] if args.ats_seed is not None else []
    return opts + (["TEST.PRECISION", args.precision] if args.precision else [])


def parse_ratios(text: str, flag: str, example: str) -> List[float]:
    """A comma-separated list of token ratios in (0, 1] (`--budgets`), sorted and without repeats; anything else
    is one line naming the flag and an example."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 < v <= 1 for v in values):
        raise VideoATSError(f"{flag} {text!r}: give comma-separated ratios in (0, 1], e.g. {example}")
    return sorted(set(values))
