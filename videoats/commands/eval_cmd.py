"""`videoats eval`: the multi-view test of a config + checkpoint on a dataset (see videoats.evaluation.evaluate).

Launch with torchrun for several processes; the process group is started here from the torchrun variables,
and only rank 0 prints and writes files.
"""
from __future__ import annotations

import os
import sys

import torch.distributed as dist

from ._args import add_common, add_config_args, add_inference_args, inference_overrides
from ..config import load_config
from ..errors import VideoATSError
from ..evaluation.evaluate import evaluate
from ..evaluation.report import format_summary
from ..inference.predictor import stored_config
from ..paths import declare_outputs
from ..runtime import init_from_env


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="multi-view test: top-1/top-5, coverage, GFLOPs per view and total",
        description="Evaluate a checkpoint on the config's test split with the config's views (clips x crops) "
                    "and aggregation. Writes results.json, predictions.jsonl, summary.txt and, for ATS models, "
                    "kept_tokens.png. Run under torchrun to shard the videos over processes.")
    add_config_args(p)
    p.add_argument("--checkpoint", help="weights to evaluate (default: TEST.CHECKPOINT_FILE), zoo:NAME, or demo; "
                                        "without --config, the config the checkpoint was saved with is used")
    p.add_argument("--output", metavar="DIR", help="where to write the results (default: OUTPUT_DIR)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_inference_args(p)
    add_common(p)
    declare_outputs(p, output="dir")
    p.set_defaults(func=run, human=fmt)


def unused_output(folder: str) -> str:
    """`folder`, or when an earlier eval's results.json is there, the first `folder/eval-N` without one:
    without --output, a new eval must not overwrite the last one's results."""
    if not os.path.exists(os.path.join(folder, "results.json")):
        return folder
    n = 2
    while os.path.exists(os.path.join(folder, f"eval-{n}", "results.json")):
        n += 1
    return os.path.join(folder, f"eval-{n}")


def run(args) -> dict:
    opts = list(args.opts) + inference_overrides(args)
    if args.config:
        cfg = load_config(args.config, opts)
    elif args.checkpoint:
        cfg, args.checkpoint = stored_config(args.checkpoint, opts)
    else:
        raise VideoATSError("give --config FILE, or a --checkpoint saved by videoats (it stores its config)")
    if args.output is None and cfg.OUTPUT_DIR:
        fresh = unused_output(cfg.OUTPUT_DIR)
        if fresh != cfg.OUTPUT_DIR:
            args.output = fresh
            print(f"videoats eval: {cfg.OUTPUT_DIR} holds an earlier eval's results; writing to {fresh} "
                  "(give --output DIR to choose)", file=sys.stderr)
    started = init_from_env(cfg)
    rank = 0
    try:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        result = evaluate(cfg, checkpoint=args.checkpoint or None, output_dir=args.output,
                          progress=not (args.json or args.no_progress))
    finally:
        if started:
            dist.destroy_process_group()
    if rank != 0:
        return None  # rank 0 speaks for all
    result["config_file"] = args.config or f"stored in {args.checkpoint}"
    result["exit_code"] = 0 if result["coverage"]["evaluated_videos"] else 1
    return result


def fmt(result: dict) -> str:
    return format_summary(result)
