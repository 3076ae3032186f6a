"""`videoats visualize`: the tokens every ATS stage keeps, drawn over the frames of one clip (PNG, GIF).

Several videos are drawn with one model load, one picture each in --output-dir (named after the video);
every output path is checked before the model is built, and a bad video is listed without stopping the rest.
"""
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
    p.add_argument("inputs", nargs="+", metavar="VIDEO", help="one or more videos")
    add_model_args(p)
    p.add_argument("--output", metavar="PNG", help="one video: the grid (default: <video name>_tokens.png here)")
    p.add_argument("--gif", metavar="GIF", help="one video: also write an animated GIF over the frames")
    p.add_argument("--output-dir", metavar="DIR", help="several videos: where <video name>_tokens.png go "
                                                       "(default: here)")
    p.add_argument("--frames", type=int, metavar="N", help="show N frames spread over the clip (default: all)")
    p.add_argument("--no-grid", action="store_true", help="no patch grid lines")
    add_common(p)
    accept_overrides(p)
    declare_outputs(p, output="file", gif="file", output_dir="dir")
    p.set_defaults(func=run, human=fmt)


def run(args) -> dict:
    videos, opts = list(args.inputs), args.opts
    if args.frames is not None and args.frames < 1:
        raise VideoATSError(f"--frames {args.frames}: give at least 1")
    if len(videos) > 1 and (args.output or args.gif):
        raise VideoATSError(f"{len(videos)} videos: --output and --gif name one picture; use --output-dir DIR "
                            "for one picture per video")
    if len(videos) == 1 and args.output_dir:
        raise VideoATSError("--output-dir is for several videos; for one, name the picture with --output")
    outputs = _output_paths(videos, args.output, args.output_dir)
    for output in outputs:  # the default names too, before the model is built
        check_output_file(output, "--output")
    predictor = load_predictor(config=args.config, model_name=args.model, checkpoint=args.checkpoint, ats="on",
                               opts=opts, labels_file=args.labels)
    results, errors = [], []
    for video, output in zip(videos, outputs):
        try:
            results.append(visualize_clip(predictor, video, output, gif=args.gif, frames=args.frames,
                                          grid=not args.no_grid))
        except DecodeFailure as e:
            if len(videos) == 1:
                raise VideoATSError(f"{video}: {e.reason}" + (f" ({e.detail})" if e.detail else ""))
            errors.append({"path": video, "reason": e.reason, "detail": e.detail})
    for line in dict.fromkeys(line for r in results for line in r["warnings"]):
        print(f"videoats visualize: warning: {line}", file=sys.stderr)
    if len(videos) == 1:
        return results[0]
    result = {"results": results, "errors": errors}
    if not results:
        result["error"] = f"no video could be drawn ({len(errors)} bad file{'s' if len(errors) != 1 else ''})"
    return result


def _output_paths(videos, output, folder):
    """One picture path per video; two videos with the same name would overwrite each other's picture."""
    if len(videos) == 1:
        return [output or f"{os.path.splitext(os.path.basename(videos[0]))[0]}_tokens.png"]
    names = [f"{os.path.splitext(os.path.basename(v))[0]}_tokens.png" for v in videos]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise VideoATSError(f"several videos would be drawn to the same picture ({', '.join(clash)}); run them "
                            "separately with --output")
    return [os.path.join(folder or ".", n) for n in names]


def fmt(result: dict) -> str:
    if "results" in result:  # several videos
        blocks = [fmt(r) for r in result["results"]]
        blocks += [f"{e['path']}: {e['reason']}" + (f" ({e['detail']})" if e["detail"] else "")
                   for e in result["errors"]]
        return "\n\n".join(blocks)
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
