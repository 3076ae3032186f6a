"""`videoats check-videos` (a preflight over an annotation) and `videoats make-synthetic`.

check-videos exits 0 when every listed video decodes, 1 when some are missing or corrupt (so that a script
can stop before a run that would silently evaluate fewer videos), 2 on a usage error. Videos shorter than
a clip are listed but do not fail the check: the sampler clamps their frame indices.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, Tuple

from ._args import add_common, add_config_args
from ..config import load_config
from ..data.annotations import write_annotation
from ..data.dataset import load_annotation
from ..data.decoding import DecodeFailure, read_meta, refuse_truncated
from ..data.synthetic import make_synthetic
from ..errors import VideoATSError
from ..paths import declare_outputs, require_data_dir


def register(subparsers) -> None:
    check = subparsers.add_parser(
        "check-videos", help="find missing, corrupt and too-short videos of an annotation",
        description="Decode the first and last frame of every video an annotation lists and report the "
                    "missing, corrupt (unreadable, truncated, zero frames, decode timeout) and too-short ones. "
                    "Exit code 1 when any are missing or corrupt.")
    add_config_args(check)
    check.add_argument("--split", default="test", choices=("train", "val", "test"),
                       help="which DATA.<SPLIT>_ANNOTATION to scan (default: test)")
    check.add_argument("--annotation", help="scan this annotation file (or class folder) instead")
    check.add_argument("--write-clean", metavar="OUT",
                       help="write the annotation without missing/corrupt videos, in the same format")
    check.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                       help="videos checked at once (default: %(default)s)")
    add_common(check)
    declare_outputs(check, write_clean="file")
    check.set_defaults(func=run_check_videos, human=format_check_videos)

    synth = subparsers.add_parser(
        "make-synthetic", help="write the synthetic motion benchmark (mp4 + Kinetics-style CSVs)",
        description="Render a synthetic action benchmark (classes defined by motion) as lossless H.264 mp4 "
                    "files in <OUT>/<split>/<label>/ plus train.csv, val.csv, test.csv (official Kinetics "
                    "format), labels.txt and scenes.csv (every clip's complexity factors: objects, their size and area, "
                    "background, distractors, share of moving pixels). The same seed gives the same decoded frames, "
                    "whatever --workers.")
    synth.add_argument("out", metavar="OUT", help="output folder")
    synth.add_argument("--classes", type=int, default=10, help="number of motion classes, 1-12 (default: 10)")
    synth.add_argument("--per-class", default="16,4,4", metavar="TRAIN[,VAL[,TEST]]",
                       help="videos per class and split (default: %(default)s)")
    synth.add_argument("--frames", type=int, default=32, help="frames per video (default: 32)")
    synth.add_argument("--size", default="64", metavar="S|HxW", help="frame size, even (default: 64)")
    synth.add_argument("--fps", type=int, default=30, help="frames per second, at least 1 (default: 30)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                       help="processes rendering and encoding (default: %(default)s)")
    add_common(synth)
    declare_outputs(synth, out="dir")
    synth.set_defaults(func=run_make_synthetic, human=format_make_synthetic)


# ---------------------------------------------------------------------------------------------- check


def _check_one(record, num_frames: int, backend: str, timeout: float) -> Tuple[str, str, int]:
    try:  # a truncated video is corrupt here as in eval and infer (see data.decoding)
        meta = refuse_truncated(read_meta(record.path, backend=backend, timeout=timeout))
    except DecodeFailure as e:
        kind = e.reason if e.reason in ("missing", "unreadable") else "corrupt"
        return kind, e.reason + (f": {e.detail}" if e.detail else ""), 0
    if meta.num_frames < num_frames:
        return "too_short", f"{meta.num_frames} frames, fewer than DATA.NUM_FRAMES={num_frames}", meta.num_frames
    return "ok", "", meta.num_frames


def run_check_videos(args) -> dict:
    cfg = load_config(args.config, args.opts)
    if not args.annotation and cfg.DATA.PATH_TO_DATA_DIR:
        require_data_dir(cfg)
    ann = load_annotation(cfg, args.split, args.annotation)
    if args.workers < 1:
        raise VideoATSError(f"--workers must be at least 1, got {args.workers}")
    num_frames = int(cfg.DATA.NUM_FRAMES)
    check = lambda rec: _check_one(rec, num_frames, cfg.DATA.DECODER, float(cfg.DATA.DECODE_TIMEOUT))
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        verdicts = list(pool.map(check, ann.records))
    counts = {"ok": 0, "missing": 0, "unreadable": 0, "corrupt": 0, "too_short": 0}
    problems: List[dict] = []
    keep = []
    for index, (record, (kind, detail, frames)) in enumerate(zip(ann.records, verdicts)):
        counts[kind] += 1
        if kind != "ok":
            problems.append({"index": index, "path": record.path, "label": record.label_name,
                             "problem": kind, "detail": detail, "frames": frames})
        if kind in ("ok", "too_short"):
            keep.append(record)
    written = None
    if args.write_clean:
        written = write_annotation(ann, keep, args.write_clean)
    bad = counts["missing"] + counts["unreadable"] + counts["corrupt"]
    return {
        "annotation": ann.source, "format": ann.format, "split": args.split, "videos": len(ann.records),
        "counts": counts, "decodable": counts["ok"] + counts["too_short"], "problems": problems,
        "clean_annotation": written, "clean_videos": len(keep) if written else None,
        "exit_code": 1 if bad else 0,
    }


def format_check_videos(result: dict) -> str:
    c = result["counts"]
    lines = [f"{result['annotation']} ({result['format']}): {result['videos']} videos, "
             f"{result['decodable']} decodable, {c['missing']} missing, "
             + (f"{c['unreadable']} unreadable, " if c.get("unreadable") else "")
             + f"{c['corrupt']} corrupt, {c['too_short']} too short"]
    for p in result["problems"][:50]:
        lines.append(f"  {p['problem']:9s} {p['path']}  {p['detail']}")
    if len(result["problems"]) > 50:
        lines.append(f"  ... {len(result['problems']) - 50} more (use --json for all)")
    if result["clean_annotation"]:
        lines.append(f"wrote {result['clean_annotation']} ({result['clean_videos']} videos)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- synthetic


def _parse_size(text: str):
    try:
        parts = [int(p) for p in text.lower().replace("*", "x").split("x")]
    except ValueError:
        raise VideoATSError(f"--size {text!r}: give S or HxW in pixels, e.g. 64 or 64x80") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise VideoATSError(f"--size {text!r}: give S or HxW in pixels, e.g. 64 or 64x80")


def _parse_per_class(text: str):
    try:
        counts = [int(p) for p in text.split(",")]
    except ValueError:
        raise VideoATSError(f"--per-class {text!r}: give TRAIN[,VAL[,TEST]] counts, e.g. 16,4,4") from None
    if not 1 <= len(counts) <= 3 or min(counts) < 0:
        raise VideoATSError(f"--per-class {text!r}: give one to three counts >= 0, e.g. 16,4,4")
    if len(counts) == 1:
        return counts[0]
    return counts


def run_make_synthetic(args) -> dict:
    return make_synthetic(args.out, num_classes=args.classes, videos_per_class=_parse_per_class(args.per_class),
                          num_frames=args.frames, size=_parse_size(args.size), fps=args.fps, seed=args.seed,
                          workers=max(1, args.workers))


def format_make_synthetic(result: dict) -> str:
    v = result["videos"]
    return (f"wrote {sum(v.values())} videos ({v['train']} train, {v['val']} val, {v['test']} test; "
            f"{result['num_classes']} classes, {result['num_frames']} frames, "
            f"{result['height']}x{result['width']}) to {result['out_dir']} in {result['seconds']:.1f} s")
