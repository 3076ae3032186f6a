"""`videoats figures`: the ATS paper's three figures on the synthetic benchmark, as PNGs and one JSON file.

    videoats figures --config configs/synthetic/benchmark_ats.yaml --dense DENSE.pt --finetuned ATS.pt \
        --output figures/ DATA.PATH_TO_DATA_DIR data/benchmark

The config names the data, the model and the fine-tuned ATS setting (ATS section); the budgets swept for the
GFLOPs curves are ratios of the tokens present at every ATS stage. See `videoats.figures` for what each figure
measures and why the fixed-count baseline is top-k by the same score.
"""
from __future__ import annotations

import json
import os
import sys

import torch

from ._args import add_common, add_config_args, parse_ratios
from .. import create_model, load_checkpoint
from ..atomic import atomic_write_text
from ..config import ats_from_cfg, load_config
from ..errors import VideoATSError
from ..evaluation.plots import plot_kept_tokens
from ..figures import load_test_clips, measure, plot_adaptivity, plot_scaling
from ..paths import declare_outputs

BUDGETS = "0.3,0.4,0.5,0.6,0.7,0.8,1.0"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "figures", help="kept-token histograms, top-1 vs GFLOPs (ATS vs top-k) and kept tokens vs complexity",
        description="Reproduce the ATS paper's three figures on a synthetic benchmark: the kept tokens per ATS "
                    "stage over the test set, top-1 against GFLOPs for dense, ATS off the shelf, ATS fine-tuned "
                    "and a fixed top-k count by the same score, and the kept tokens against every complexity "
                    "factor of scenes.csv with Spearman's rho. Writes figures.json and three PNGs.")
    add_config_args(p, required=True)
    p.add_argument("--dense", required=True, metavar="CKPT", help="the densely trained weights")
    p.add_argument("--finetuned", required=True, metavar="CKPT", help="the weights fine-tuned with ATS")
    p.add_argument("--budgets", default=BUDGETS, metavar="R,R,...",
                   help="token ratios swept for the curves (default: %(default)s)")
    p.add_argument("--output", default="figures", metavar="DIR", help="folder for the files (default: ./figures)")
    add_common(p)
    declare_outputs(p, output="dir")
    p.set_defaults(func=run, human=human)


def run(args) -> dict:
    cfg = load_config(args.config, args.opts)
    ats = ats_from_cfg(cfg)
    if ats is None or isinstance(ats["tokens"], list) or ats["tokens"] > 1:
        raise VideoATSError(f"{args.config}: the figures need ATS enabled with one token ratio (ATS.ENABLE True, "
                            "ATS.TOKENS [0.5]), the fine-tuned setting")
    budgets = parse_ratios(args.budgets, "--budgets", BUDGETS)
    for path in (args.dense, args.finetuned):
        if not os.path.isfile(path):
            raise VideoATSError(f"checkpoint not found: {path}")
    say = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    say(f"decoding the {cfg.TEST.SPLIT} split of {cfg.DATA.PATH_TO_DATA_DIR} ...")
    clips = load_test_clips(cfg)
    model = create_model(cfg.MODEL.NAME, num_classes=int(cfg.MODEL.NUM_CLASSES)).eval()
    states = []
    for path in (args.dense, args.finetuned):
        load_checkpoint(model, path)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    torch.manual_seed(int(cfg.SEED))
    doc, main = measure(model, states[0], states[1], ats, budgets, clips, say)
    doc.update(model=cfg.MODEL.NAME, config=args.config, data=os.path.abspath(cfg.DATA.PATH_TO_DATA_DIR),
               checkpoints={"dense": os.path.abspath(args.dense), "finetuned": os.path.abspath(args.finetuned)})

    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    tokens = int(clips["video"].shape[2]) * model.num_patches
    files = {"kept_tokens": plot_kept_tokens(main["kept"], os.path.join(out, "kept_tokens.png"),
                                             title=f"{cfg.MODEL.NAME} + ATS fine-tuned, test set", of=tokens),
             "scaling": plot_scaling(doc, os.path.join(out, "top1_vs_gflops.png")),
             "adaptivity": plot_adaptivity(main, clips["factors"], doc["adaptivity"],
                                           os.path.join(out, "kept_vs_complexity.png"))}
    doc["kept_tokens_histogram"] = {str(b): v.tolist() for b, v in main["kept"].items()}
    doc["files"] = dict(files, json=os.path.join(out, "figures.json"))
    atomic_write_text(doc["files"]["json"], json.dumps(doc, indent=1) + "\n")
    return doc


def human(doc: dict) -> str:
    d = doc["dense"]
    lines = [f"{doc['model']} on {doc['videos']} test clips: dense top-1 {d['top1']:.2f}% at "
             f"{d['gflops_per_view']:.4f} "
             f"GFLOPs/view; reversing the frames changes {d['reversed_frames_change_prediction_pct']:.1f}% of "
             "its predictions", "",
             f"{'setting':<22}{'weights':<12}{'budget':>7}{'top-1':>8}{'GFLOPs':>9}{'saved':>7}"]
    for p in doc["points"]:
        saved = 100 * (1 - p["gflops_per_view"] / d["gflops_per_view"])
        lines.append(f"{p['setting']:<22}{p['weights']:<12}{str(p['budget'] or '-'):>7}{p['top1']:>7.2f}%"
                     f"{p['gflops_per_view']:>9.4f}{saved:>6.1f}%")
    lines += ["", "ATS minus top-k at the same mean GFLOPs (top-k interpolated):"]
    lines += [f"  {g['weights']:<11} budget {g['budget']}: {g['ats_top1']:.2f}% vs "
              f"{g['top_k_top1_at_same_gflops']:.2f}%"
              f" ({g['gap']:+.2f})" for g in doc["equal_gflops"]]
    a = doc["adaptivity"]
    lines += ["", f"Spearman's rho of kept tokens (fine-tuned, budget {doc['ats']['tokens']}) against each factor "
                  f"(primary: {a['primary_factor']}):"]
    for name, rho in a["by_factor"].items():
        lines.append(f"  {name:<20}" + "  ".join(f"{k} {'n/a' if v is None else f'{v:+.2f}'}" for k, v in rho.items()))
    lines += ["", "Files:"] + [f"  {k}: {v}" for k, v in doc["files"].items()]
    return "\n".join(lines)
