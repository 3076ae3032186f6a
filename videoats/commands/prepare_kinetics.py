"""`videoats prepare-kinetics`: official Kinetics list + raw downloads -> the copy `eval` and `train` read.

The work is `videoats.data.prepare`; the report is check-videos' (same counts, same problem lines), so a run
reads like a check of the copy it wrote. Exit code 1 when clips are missing or undecodable, 2 on a usage error.
"""
from __future__ import annotations

import os

from ._args import add_common
from .data_cmds import format_check_videos
from ..paths import declare_outputs


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare-kinetics", help="cut and resize raw Kinetics downloads into the layout eval and train read",
        description="Cut every clip of an official Kinetics list (label,youtube_id,time_start,time_end,split) "
                    "from the raw downloads, scale its short side down, and write "
                    "OUT/<split>/<label>/<id>_<start>_<end>.mp4 (H.264) plus OUT/<split>.csv (validate becomes val). "
                    "Downloads are found anywhere under DOWNLOADS, named ID.ext, ID_START_END.ext (already cut) "
                    "or 'Title [ID].ext' (yt-dlp's default), in any container. Run it again to resume: finished "
                    "clips are skipped, unfinished ones are never left under their final name. Reports missing "
                    "and undecodable downloads as check-videos does; exit code 1 when there are any.")
    parser.add_argument("csv", metavar="CSV", help="the official list of one split, e.g. kinetics600/validate.csv")
    parser.add_argument("downloads", metavar="DOWNLOADS", help="folder of raw downloads named by YouTube id")
    parser.add_argument("out", metavar="OUT", help="output folder: give it to eval and train as DATA.PATH_TO_DATA_DIR")
    parser.add_argument("--short-side", type=int, default=256,
                        help="scale the short side down to this many pixels, even; 0 keeps the size (default: "
                             "%(default)s, as the TimeSformer and X-ViT recipes prepare Kinetics)")
    parser.add_argument("--crf", type=int, default=23, help="x264 quality, 0 (lossless) to 51 (default: %(default)s)")
    parser.add_argument("--split", help="the split of every row (train, val/validate, test), instead of the "
                                        "list's split column")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="clips prepared at once, one process each (default: %(default)s, the CPU count)")
    add_common(parser)
    declare_outputs(parser, out="dir")
    parser.set_defaults(func=run_prepare_kinetics, human=format_prepare_kinetics)


def run_prepare_kinetics(args) -> dict:
    # the one import left for the command to make: preparing encodes with PyAV, which the CLI does not load
    # for the other commands (a GPU host that only runs models may have no video library)
    from ..data.prepare import prepare_kinetics

    return prepare_kinetics(args.csv, args.downloads, args.out, short_side=args.short_side, crf=args.crf,
                            split=args.split, workers=args.workers, progress=not args.json)


def format_prepare_kinetics(result: dict) -> str:
    return (format_check_videos(result) + "\n"
            f"prepared {result['prepared']} clips now, {result['already_done']} were done before "
            f"(short side {result['short_side'] or 'kept'}, {result['seconds']:.1f} s); "
            f"next: videoats check-videos --annotation {next(iter(result['annotations'].values()))}")
