"""`videoats visualize`: the tokens every ATS stage keeps, drawn over the frames of one clip (PNG, GIF)."""
from __future__ import annotations

import os
import sys

from ._args import accept_overrides, add_common
from ..data.decoding import DecodeFailure
from ..errors import VideoATSError
from ..inference.predictor import load_predictor
from ..inference.visualize import visualize_clip
from ..paths import check_output_file, declare_outputs
from .infer import add_model_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "visualize", help="draw the tokens each ATS stage keeps over the frames of a clip (PNG grid, GIF)",
        description="Run the model with ATS on one view of VIDEO (the first temporal clip, centre crop) and "
                    "write a PNG grid: a row per frame, a column for the input and one per ATS stage, dropped "
                    "patches darkened. ATS is switched on (the config's ATS.BLOCKS, or the last three quarters "
                    "of the blocks) if the config has it off.")
    p.add_argument("inputs", nargs="+", metavar="VIDEO", help="one video")
    add_model_args(p)
    p.add_argument("--output", metavar="PNG", help="the grid (default: <video name>_tokens.png here)")
    p.add_argument("--gif", metavar="GIF", help="also write an animated GIF over the frames")
    p.add_argument("--frames", type=int, metavar="N", help="show N frames spread over the clip (default: all)")
    p.add_argument("--no-grid", action="store_true", help="no patch grid lines")
    add_common(p)
    accept_overrides(p)
    declare_outputs(p, output="file", gif="file")
    p.set_defaults(func=run, human=fmt)


def run(args) -> dict:
    videos, opts = list(args.inputs), args.opts
    if len(videos) != 1:
        raise VideoATSError(f"give exactly one video, got {len(videos)}: {' '.join(videos) or '(none)'}")
    video = videos[0]
    if args.frames is not None and args.frames < 1:
        raise VideoATSError(f"--frames {args.frames}: give at least 1")
    output = args.output or f"{os.path.splitext(os.path.basename(video))[0]}_tokens.png"
    check_output_file(output, "--output")  # the default name too, before the model is built
    predictor = load_predictor(config=args.config, model_name=args.model, checkpoint=args.checkpoint, ats="on",
                               opts=opts, labels_file=args.labels)
    try:
        result = visualize_clip(predictor, video, output, gif=args.gif, frames=args.frames, grid=not args.no_grid)
    except DecodeFailure as e:
        raise VideoATSError(f"{video}: {e.reason}" + (f" ({e.detail})" if e.detail else ""))
    for line in result["warnings"]:
        print(f"videoats visualize: warning: {line}", file=sys.stderr)
    return result


def fmt(result: dict) -> str:
    lines = [f"{result['video']}: {result['setting']}",
             f"frames {result['clip_frames']} (centre crop {result['crop_size']} px), "
             f"{result['patch_tokens']} patch tokens"]
    for s in result["stages"]:
        lines.append(f"  block {s['block']:>2}: kept {s['kept']}/{s['total']} ({100 * s['fraction']:.0f}%)")
    if result["gflops_per_view"] is not None:
        lines.append(f"GFLOPs: {result['gflops_per_view']:.4g} (dense {result['dense_gflops_per_view']:.4g})")
    lines.append("top: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["topk"][:3]))
    lines.append(f"wrote {result['output']} ({result['image']['width']}x{result['image']['height']})")
    if result["gif"]:
        lines.append(f"wrote {result['gif']} ({result['animation']['frames']} frames)")
    return "\n".join(lines)
