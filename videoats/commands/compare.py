"""`videoats compare`: ATS against top-k, random, EViT and ToMe at the same blocks, budgets and GFLOPs accounting
(see `videoats.comparison` for what is measured and how differences are paired).

    videoats compare                                   # the embedded benchmark and the shipped model
    videoats compare --finetune-epochs 1               # ... and each method after a short fine-tune, per seed
    videoats compare --config K600.yaml --checkpoint W.pt DATA.PATH_TO_DATA_DIR /data/k600   # your own copy
"""
from __future__ import annotations

import os

from ._args import add_common, add_config_args, parse_ratios
from .demo import ensure_split, shipped_test_config
from ..ats.core import METHOD_NAMES, SELECTIONS
from ..comparison import Finetune, Plan, compare
from ..config import apply_overrides, load_config
from ..errors import VideoATSError
from ..inference.shipped import CHECKPOINT, ats_overrides, provenance
from ..paths import cache_dir, check_output_dir, declare_outputs

METHODS = ",".join(SELECTIONS)
BUDGETS = "0.1,0.2,0.3,0.5,0.7"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="ATS against top-k, random, EViT and ToMe: top-1 vs GFLOPs, paired over clips and seeds",
        description="Evaluate every token-reduction method at the same ATS blocks and budgets (the config's "
                    "ATS.BLOCKS and ATS.VARIANT), off the shelf and, with --finetune-epochs, after a short "
                    "fine-tune per method and seed; time each method's forward pass on this machine. Writes "
                    "comparison.json and top1_vs_gflops.png. Without --config: the embedded benchmark and the "
                    "shipped model.")
    add_config_args(p)
    p.add_argument("--checkpoint", help="weights (default: TEST.CHECKPOINT_FILE; without --config the shipped model)")
    p.add_argument("--methods", default=METHODS, metavar="M,M,...",
                   help="selections to compare, the first the reference (default: %(default)s)")
    p.add_argument("--budgets", default=BUDGETS, metavar="R,R,...", help="token ratios (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2", metavar="S,S,...",
                   help="seeds of the random selection and of each fine-tune (default: %(default)s)")
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="E",
                   help="fine-tune each method for E epochs per seed before evaluating it again (default 0: off)")
    p.add_argument("--finetune-budget", type=float, default=0.5, metavar="R",
                   help="the budget every method is fine-tuned at (default: %(default)s)")
    p.add_argument("--train-per-class", type=int, default=40, metavar="N",
                   help="without --config: training clips per class generated for the fine-tune (default: "
                        "%(default)s)")
    p.add_argument("--timing-views", type=int, default=16, metavar="N",
                   help="test views in the batch each method is timed on (default: %(default)s)")
    p.add_argument("--output", default="compare", metavar="DIR", help="folder for the files (default: ./compare)")
    add_common(p)
    declare_outputs(p, output="dir")
    p.set_defaults(func=run, human=human)


def _list(text: str, kind, flag: str, example: str) -> list:
    """A comma-separated list of `kind`, in the order given, without repeats (methods, seeds)."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise VideoATSError(f"{flag} {text!r}: give a comma-separated list, e.g. {flag} {example}")
    return list(dict.fromkeys(values))


def _benchmark_train_split(per_class: int) -> str:
    """A training split of the embedded benchmark (the first `per_class` training clips of every class of the
    recipe the shipped model was trained on), generated once into the cache."""
    folder = check_output_dir(cache_dir(f"compare_train_{per_class}"), "the comparison's data cache")
    return ensure_split(folder, provenance()["synthetic"], "train", per_class)


def plan_from_args(args, say) -> Plan:
    methods = _list(args.methods, str, "--methods", METHODS)
    budgets = parse_ratios(args.budgets, "--budgets", BUDGETS)
    seeds = _list(args.seeds, int, "--seeds", "0,1,2")
    output = os.path.abspath(args.output)
    if args.config:
        cfg = load_config(args.config, args.opts)
        checkpoint = args.checkpoint or cfg.TEST.CHECKPOINT_FILE
        if not checkpoint:
            raise VideoATSError("give --checkpoint (or TEST.CHECKPOINT_FILE): the weights every method runs on")
        data, train_cfg, notes = cfg.DATA.PATH_TO_DATA_DIR, cfg, []
    else:
        cfg, data = shipped_test_config()
        apply_overrides(cfg, ats_overrides() + list(args.opts))
        checkpoint, train_cfg = str(CHECKPOINT), None
        notes = ["the shipped weights were fine-tuned with ATS (tube, budget 0.5): off the shelf, ATS runs on "
                 "weights trained for it and the other methods do not"]
    finetune = None
    if args.finetune_epochs > 0:
        if not 0 < args.finetune_budget <= 1:
            raise VideoATSError(f"--finetune-budget {args.finetune_budget}: give a ratio in (0, 1]")
        if train_cfg is None:
            say(f"generating {args.train_per_class} training clips per class for the fine-tunes (once)")
            train_cfg = cfg.clone()
            train_cfg.DATA.PATH_TO_DATA_DIR = _benchmark_train_split(args.train_per_class)
            notes.append(f"fine-tuned from the shipped weights on {args.train_per_class} benchmark training clips "
                         "per class")
        finetune = Finetune(train_cfg, args.finetune_epochs, args.finetune_budget)
    os.makedirs(output, exist_ok=True)
    return Plan(cfg, checkpoint, methods, budgets, seeds, output, finetune, args.timing_views, data, notes).check()


def run(args) -> dict:
    say = (lambda s: None) if args.json else (lambda s: print(s, flush=True))
    return compare(plan_from_args(args, say), say)


def human(doc: dict) -> str:
    d, ref = doc["dense"], METHOD_NAMES[doc["methods"][0]]
    lines = [f"dense: top-1 {d['top1']:.2f}% at {d['gflops_mean']:.4f} GFLOPs/view; {doc['clips']} test clips",
             f"{ref} against each method: clips only {ref} / only the other gets right (same budget, per seed); "
             f"{ref} top-1 minus the other's at equal GFLOPs, read at {ref}'s point | at the other's (mean [min, max] "
             "over seeds; n/a: outside the other curve)"]
    for row in doc["paired"]:
        parts = []
        for method in doc["methods"][1:]:
            r = row.get(method)
            if not r or not r["pairs"]:
                continue
            counts = " ".join(f"{p['reference_only']}/{p['other_only']}" for p in r["pairs"])
            gaps = " | ".join("n/a" if d["mean"] is None else f"{d['mean']:+.2f} [{d['min']:+.2f}, {d['max']:+.2f}]"
                              for d in (r["difference"], r["difference_at_other"]))
            parts.append(f"{METHOD_NAMES[method]} {counts} {gaps}")
        lines.append(f"{row['stage']:<13} budget {row['budget']:<4} " + "; ".join(parts))
    lines.append("seconds per view (forward pass, one batch): " + ", ".join(
        f"{METHOD_NAMES.get(t['method'], t['method'])}" + ("" if t["budget"] is None else f"@{t['budget']}") +
        f" {t['seconds_per_view'] * 1e3:.2f} ms" for t in doc["wall_clock"]))
    lines += [f"note: {n}" for n in doc["notes"]]
    lines.append(f"files: {os.path.dirname(doc['plot'])}")
    return "\n".join(lines)
