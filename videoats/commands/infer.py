"""`videoats infer`: top-k labels of the user's own videos, with the GFLOPs and tokens they cost.

Bad inputs are answered one by one (missing, unreadable, not a video, corrupt, zero frames, timeout) and the
good ones still get their predictions; the exit status is non-zero only when nothing could be processed, so
a script over a messy folder does not stop on the first broken file. In text mode each answer is printed as
soon as its video is done (a progress bar on stderr shows where a folder run stands); the bad files follow,
one line each with its reason.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys

from tqdm import tqdm

from ._args import accept_overrides, add_common, add_inference_args, inference_overrides
from ..ats.core import METHOD_NAMES
from ..errors import VideoATSError
from ..inference.predict import describe_run, infer_videos
from ..data.decoding import DecodeFailure
from ..data.files import VIDEO_EXTENSIONS
from ..inference.predictor import load_predictor
from ..inference.annotate import check_video_output, write_annotated_video
from ..inference.streams import is_stream, predict_stream
from ..atomic import atomic_write_text
from ..paths import check_not_an_input, declare_outputs
from ..inference.shipped import config_path


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model flags `infer` and `visualize` share."""
    p.add_argument("--config", "--cfg", dest="config", metavar="CFG", type=config_path,
                   help="YAML config file, or a packaged config by name (e.g. synthetic/benchmark)")
    p.add_argument("--model", metavar="NAME", help="a registered model (see `videoats models`); overrides "
                                                    "MODEL.NAME; without --config the clip size follows it")
    p.add_argument("--checkpoint", metavar="PATH", help="weights (any layout `load_checkpoint` knows), zoo:NAME, or "
                                                        "`demo` for the model shipped in the package; a videoats "
                                                        "checkpoint also gives the model, config and label names")
    p.add_argument("--labels", metavar="FILE", help="label names, one a line (default: the checkpoint's)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "infer", help="top-k labels of videos (or of every clip of a long video) with GFLOPs and kept tokens",
        description="Decode each video, sample the test views (clips x crops, as `eval` does), run the model "
                    "and print the top-k labels (views aggregated as TEST.AGGREGATION says), the GFLOPs spent "
                    "(per view and total) and the tokens kept at every ATS stage. A folder stands for the "
                    "videos in it. Bad files are listed with their reason; the exit status is non-zero only "
                    "when no video could be processed.",
        epilog="example: videoats infer clip.mp4 --checkpoint model.safetensors --ats on --topk 3")
    p.add_argument("inputs", nargs="+", metavar="VIDEO",
                   help="video files or folders; a URL (rtsp://, http(s)://, ...), a camera (/dev/video0) or - "
                        "(standard input) is read as a stream and answered window by window as it comes")
    add_model_args(p)
    p.add_argument("--ats", choices=("on", "off"), help="force Adaptive Token Sampling on or off (default: the "
                                                        "checkpoint's or config's ATS.ENABLE; the shipped model "
                                                        "runs ATS at the budget its figures use)")
    p.add_argument("--views", metavar="CxS", help="temporal clips x spatial crops, the clips placed as eval places "
                                                  "them (default: clips covering the video, at most 10, x the "
                                                  "config's TEST.NUM_SPATIAL_CROPS)")
    p.add_argument("--csv", metavar="FILE", help="also write the answers as CSV: a row per video (window 'all') "
                                                 "and, with --per-clip or a stream, a row per window; bad files "
                                                 "with their reason")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="labels shown per video (default: 5)")
    p.add_argument("--per-clip", action="store_true",
                   help="slide over the video and predict every clip, with its time span")
    p.add_argument("--stride", type=float, metavar="SECONDS",
                   help="with --per-clip: seconds between clip starts (default: one clip length)")
    p.add_argument("--out-video", metavar="FILE", help="with --per-clip and one video: write it again with each "
                                                       "frame labelled by its window's top label and probability "
                                                       "(.mp4, .mkv or .mov)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_inference_args(p)
    add_common(p)
    accept_overrides(p)
    declare_outputs(p, csv="file", out_video="file")
    p.set_defaults(func=run, human=fmt)


def _warn(lines) -> None:
    for line in lines:
        print(f"videoats infer: warning: {line}", file=sys.stderr)


def run(args) -> dict:
    videos, opts = list(args.inputs), list(args.opts) + inference_overrides(args)
    if not videos:
        raise VideoATSError("no video given (name video files or folders before the KEY VALUE overrides)")
    if args.stride is not None and not args.per_clip and not any(is_stream(v) for v in videos):
        raise VideoATSError("--stride is for --per-clip; add --per-clip or drop --stride")
    if args.out_video:
        if not args.per_clip or len(videos) != 1 or is_stream(videos[0]) or os.path.isdir(videos[0]):
            raise VideoATSError("--out-video labels the windows of one video file: give one video and --per-clip")
        check_video_output(args.out_video)
    for flag, output in (("--csv", args.csv), ("--out-video", args.out_video)):
        if output:
            check_not_an_input(output, [v for v in videos if not is_stream(v)], flag,
                               reads=lambda name: name.lower().endswith(VIDEO_EXTENSIONS))
    predictor = load_predictor(config=args.config, model_name=args.model, checkpoint=args.checkpoint,
                               ats=args.ats, opts=opts, labels_file=args.labels, views=args.views)
    if args.per_clip and args.views and int(predictor.cfg.TEST.NUM_ENSEMBLE_VIEWS) != 1:
        predictor.warnings.append(f"--per-clip takes one clip per window: the clip count of --views "
                                  f"{args.views} is ignored (its crops are used)")
    _warn(predictor.warnings)
    stream = not args.json
    shown = []

    def show(answer: dict) -> None:
        if not shown:  # the run's header, once, with the first answer
            shown.append(describe_run(predictor, args.per_clip))
            tqdm.write("\n".join(header_lines(shown[0])), file=sys.stdout)
        tqdm.write("\n".join(video_lines(answer, shown[0])), file=sys.stdout)
        sys.stdout.flush()

    live = [v for v in videos if is_stream(v)]
    files = [v for v in videos if not is_stream(v)]
    result = infer_videos(predictor, files, topk=args.topk, per_clip=args.per_clip, stride=args.stride,
                          on_result=show if stream else None, progress=not args.no_progress)
    for source in live:  # window by window, each printed as it completes
        def window_line(window: dict, source=source) -> None:
            if not shown:
                shown.append(describe_run(predictor, True))
                tqdm.write("\n".join(header_lines(shown[0]) + ["", f"{source}  (stream)"]), file=sys.stdout)
            elif window["index"] == 0:
                tqdm.write(f"\n{source}  (stream)", file=sys.stdout)
            tqdm.write(_window_line(window), file=sys.stdout)
            sys.stdout.flush()

        try:
            answer = predict_stream(predictor, source, topk=args.topk, stride=args.stride,
                                    on_window=window_line if stream else None,
                                    timeout=float(predictor.cfg.DATA.DECODE_TIMEOUT))
        except DecodeFailure as e:
            result["errors"].append({"path": source, "reason": e.reason, "detail": e.detail})
            continue
        result["results"].append(answer)
        if stream:
            tqdm.write(f"  stream, {_count(answer['clips'], 'window')}: {_topk_line(answer['topk'][:3])} "
                       "(mean probabilities)", file=sys.stdout)
    result["inputs"] += len(live)
    if args.csv:
        result["csv"] = write_csv(result, args.csv)
    if args.out_video and result["results"]:
        result["out_video"] = write_annotated_video(videos[0], result["results"][0], args.out_video)
        if stream:
            tqdm.write(f"wrote {args.out_video} ({_count(result['out_video']['frames'], 'frame')})", file=sys.stdout)
    if not result["results"]:
        bad = len(result["errors"])
        result["error"] = (f"no video could be processed ({bad} bad file{'s' if bad != 1 else ''}, "
                           f"{'each listed with its reason' if stream else 'see errors'})" if bad else
                           f"no videos found in {', '.join(videos)}")
    return result


CSV_COLUMNS = ("path", "window", "start_s", "end_s", "label", "score", "label_2", "score_2", "label_3", "score_3",
               "reason", "detail")


def write_csv(result: dict, path: str) -> str:
    """The answers as CSV rows (see --csv): spreadsheet-friendly, the same numbers as --json."""
    buffer = io.StringIO()
    out = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    out.writeheader()

    def row(source, window, start, end, topk):
        cells = {"path": source, "window": window, "start_s": start, "end_s": end}
        for k, t in enumerate(topk[:3]):
            suffix = "" if k == 0 else f"_{k + 1}"
            cells.update({f"label{suffix}": t["label"], f"score{suffix}": t["score"]})
        out.writerow(cells)

    for r in result["results"]:
        row(r["path"], "all", 0.0, r["duration_s"], r["topk"])
        for c in r.get("per_clip", []):
            row(r["path"], c["index"], c["start_s"], c["end_s"], c["topk"])
    for e in result["errors"]:
        out.writerow({"path": e["path"], "reason": e["reason"], "detail": e.get("detail", "")})
    return atomic_write_text(path, buffer.getvalue())


def _window_line(c: dict) -> str:
    return f"  [{c['start_s']:7.2f} - {c['end_s']:7.2f} s] {_topk_line(c['topk'][:3])}"


def _topk_line(items) -> str:
    return ", ".join(f"{t['label']} {t['score']:.3f}" for t in items)


def _kept_text(kept, total) -> str:
    return ", ".join(f"block {k['block']} {k['mean']:.1f}" for k in kept) + f" (of {total} patch tokens)"


def header_lines(run: dict) -> list:
    """The setting and views every answer of a run shares."""
    ats = run.get("ats")
    tokens = ats["tokens"] if ats and isinstance(ats["tokens"], (list, tuple)) else [ats["tokens"]] if ats else []
    method = METHOD_NAMES[ats.get("selection", "inverse_transform")] if ats else None
    ats_text = (f"{method} {ats['variant']} at blocks {', '.join(str(b) for b in ats['blocks'])}, budget "
                f"{', '.join(f'{t:g}' for t in tokens)} (--ats off: dense)" if ats else "dense (no ATS)")
    lines = [f"{run['setting']}  ({run['checkpoint'] or 'random weights'}; labels from {run['label_source']})",
             ats_text]
    v = run["views"]
    crops = _count(v["crops"], "crop")
    if run["mode"] == "per_clip":
        lines.append(f"per clip: {crops} per clip, crops aggregated by {run['aggregation']}")
    elif v["clip_sampling"] == "cover":
        lines.append(f"views: clips covering each video (at most {v['max_clips']}) x {crops}, aggregated by "
                     f"{run['aggregation']}; scores are probabilities")
    else:
        lines.append(f"views: {v['clips']}x{v['crops']} ({v['clip_sampling']} clips), aggregated by "
                     f"{run['aggregation']}; scores are probabilities")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def coverage_line(r: dict) -> str:
    """Which seconds of the video the answer looked at."""
    c = r["coverage"]
    spans = ", ".join(f"{a:.2f}-{b:.2f}" for a, b in c["windows_s"][:6])
    more = f", ... ({len(c['windows_s'])} in all)" if len(c["windows_s"]) > 6 else ""
    return (f"  covered {c['covered_s']:.2f} of {r['duration_s']:.2f} s ({100 * c['fraction']:.0f}%): "
            f"{_count(r['clips'], 'clip')} at {spans}{more} s")


def video_lines(r: dict, run: dict) -> list:
    """One video's answer (a blank line first, to separate it from the one before)."""
    rate = ", variable frame rate" if r.get("variable_frame_rate") else ""
    views = _count(r["views"], "view")
    lines = ["", f"{r['path']}  ({_count(r['num_frames'], 'frame')}, {r['duration_s']:.2f} s{rate}, {views})"]
    for i, t in enumerate(r["topk"], 1):
        lines.append(f"  {i}. {t['label']:<32} {t['score']:.4f}")
    g = r["gflops"]
    if g:
        dense = run.get("dense_gflops_per_view")
        extra = f" (dense {dense:.4g})" if dense and r["kept_tokens"] else ""
        lines.append(f"  GFLOPs: {g['per_view']:.4g} per view{extra}, {g['total']:.4g} total")
    if r["kept_tokens"]:
        lines.append(f"  kept tokens (mean over views): {_kept_text(r['kept_tokens'], r['patch_tokens'])}")
    if "per_clip" not in r:
        lines.append(coverage_line(r))
    if r.get("short"):
        lines.append(f"  note: {r['short']}")
    for c in r.get("per_clip", []):
        lines.append(_window_line(c))
    return lines


def fmt(result: dict) -> str:
    """What was not streamed yet (bad files, skipped files): the answers were printed as they came."""
    lines = []
    if result["errors"]:
        lines.append("")
        lines.append(f"not processed ({len(result['errors'])}):")
        for e in result["errors"]:
            detail = f": {e['detail']}" if e.get("detail") else ""
            lines.append(f"  {e['path']}: {e['reason']}{detail}")
    if result.get("skipped"):
        lines.append(f"skipped {len(result['skipped'])} non-video file(s) in the folders given")
    text = "\n".join(lines)
    return text if result["results"] else text.lstrip("\n")
