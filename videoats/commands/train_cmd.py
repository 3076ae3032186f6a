"""`videoats train`: train or fine-tune a model from a config (see videoats.train.loop).

Launch with torchrun for several processes or machines; the process group is started here from the
torchrun variables, and only rank 0 prints and writes files.
"""
from __future__ import annotations

import argparse

from ._args import add_common, add_config_args
from .. import runtime as D
from ..config import load_config

EPILOG = """\
several processes:  torchrun --standalone --nproc_per_node 2 -m videoats.cli train --config CFG
several machines:   on each of N machines (NODE = 0..N-1, MASTER = the address of machine 0):
                    torchrun --nnodes N --nproc_per_node GPUS --node_rank NODE --rdzv_backend c10d \\
                      --rdzv_endpoint MASTER:29500 --rdzv_id JOB -m videoats.cli train --config CFG
TRAIN.BATCH_SIZE is per process; TRAIN.GLOBAL_BATCH_SIZE is reached by gradient accumulation."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train or fine-tune (dense or ATS) from a config; torchrun for several processes",
        description="Train or fine-tune the config's model on its training split: AdamW/SGD, warm-up + cosine, "
                    "label smoothing, clipping, accumulation to TRAIN.GLOBAL_BATCH_SIZE, mixed precision, "
                    "validation every TRAIN.EVAL_PERIOD epochs, checkpoints last.pt/best.pt in OUTPUT_DIR, "
                    "and the final multi-view test. Initial weights: TRAIN.CHECKPOINT_FILE (any format "
                    "`videoats convert` knows; a new head when the class count differs).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, required=True)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUTPUT_DIR from checkpoints/last.pt (an error if there is none); "
                        "TRAIN.AUTO_RESUME does the same when a checkpoint exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_common(p)
    p.set_defaults(func=run, human=fmt)


def run(args) -> dict:
    # the one import left for the command to make: the training loop brings TensorBoard, which no other
    # command needs, so evaluating, inferring and benchmarking (a GPU host with torch alone) never load it
    from ..train.loop import train

    cfg = load_config(args.config, args.opts)
    started = D.init_from_env(cfg)
    try:
        result = train(cfg, resume=args.resume, progress=not (args.json or args.no_progress))
        rank = D.rank_world()[0]
    finally:
        D.cleanup(started)
    if rank != 0:
        return None  # rank 0 speaks for all
    result["config_file"] = args.config
    return result


def fmt(result: dict) -> str:
    this_run = result.get("steps_this_run", result["steps"])
    if this_run == 0:  # resumed a finished run: nothing was trained
        lines = [f"nothing left to train: {result['output_dir']} holds all {result['epochs']} epochs "
                 f"({result['steps']} steps) of {result['model']}"]
    else:
        resumed = f", {this_run} of them in this run" if this_run != result["steps"] else ""
        lines = [f"trained {result['model']} for {result['epochs']} epochs ({result['steps']} steps{resumed}, "
                 f"{result['world_size']} process(es), global batch {result['global_batch']}) "
                 f"in {result['seconds']:.0f}s -> {result['output_dir']}"]
    best = result.get("best") or {}
    if best.get("top1") is not None:
        lines.append(f"best val top-1 (clip-level) {best['top1']:.2f}% at epoch {best['epoch']}: {best['checkpoint']}")
    lines.append(f"last checkpoint: {result['last_checkpoint']}")
    test = result.get("test")
    if test:
        g = test.get("gflops_per_view")
        lines.append(f"test top-1 {test['top1']:.2f}%  top-5 {test['top5']:.2f}%  on {test['videos']}, "
                     f"{test['views']} views" + (f", {g:.4f} GFLOPs per view" if g is not None else "")
                     + f"  (results in {test['results']})")
    return "\n".join(lines)
