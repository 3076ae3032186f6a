"""Turn an official Kinetics list and a folder of raw downloads into a copy that `eval` and `train` read.

Input: the official annotation CSV (`label,youtube_id,time_start,time_end,split`, one clip a row) and a folder
of downloads, searched recursively, in any container FFmpeg reads, each named by its YouTube id: `ID.ext`
(the whole video), `ID_START_END.ext` (already cut to the row's span) or yt-dlp's default `Title [ID].ext`.

Output, per split: `OUT/<split>/<label>/<ID>_<START:06d>_<END:06d>.mp4` - H.264 in MP4, no audio, the frames
of [time_start, time_end) with their timestamps (shifted to start at 0), the short side scaled down to
`short_side` (never up) - and `OUT/<split>.csv`, the split's rows in the official format. The list keeps every
row, prepared or not, so that an evaluation on an incomplete copy reports the videos it could not evaluate
instead of silently scoring fewer. Split names are normalised (`validate` -> `val`), so `OUT/val.csv` is what
the Kinetics-600 configs read (DATA.TEST_ANNOTATION; the published numbers are on the validation videos).

Resuming: an output is written under a temp name in its folder and renamed once complete, so an output that
exists is a whole one and is skipped; the temp files a killed run left behind are removed when their clip is
planned again. An existing `OUT/<split>.csv` gains the new rows; a list this module did not write is never
replaced.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import av
from tqdm import tqdm

from ..atomic import atomic_write, atomic_write_text
from ..errors import VideoATSError
from ..paths import check_output_dir
from .decoding import DecodeFailure, check_readable, display_rgb, native_stderr_silenced, quarter_turns
from .files import VIDEO_EXTENSIONS, classify_failure

HEADER = ("label", "youtube_id", "time_start", "time_end", "split")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                 "validation": "val", "test": "test", "testing": "test"}
SHORT_TOLERANCE = 1.0  # seconds a prepared clip may fall short of its span before it is reported too_short
COUNT_KINDS = ("ok", "missing", "unreadable", "corrupt", "too_short")  # check-videos' vocabulary


@dataclass(frozen=True)
class Clip:
    """One row of a Kinetics list."""

    youtube_id: str
    start: int
    end: int
    label: str
    split: str

    @property
    def stem(self) -> str:
        return f"{self.youtube_id}_{self.start:06d}_{self.end:06d}"

    @property
    def relpath(self) -> str:
        """Where the clip goes under OUT: a split folder, a class folder (spaces as `_`), the official name."""
        parts = [self.split] + ([self.label.replace(" ", "_")] if self.label else []) + [self.stem + ".mp4"]
        return os.path.join(*parts)

    def row(self) -> List[str]:
        return [self.label, self.youtube_id, str(self.start), str(self.end), self.split]


# ---------------------------------------------------------------------------------------------- lists


def normalise_split(name: str, where: str) -> str:
    split = SPLIT_ALIASES.get(name.strip().lower())
    if split is None:
        raise VideoATSError(f"{where}: split {name!r} is not train, val (validate) or test; give --split")
    return split


def _split_from_name(path: str) -> Optional[str]:
    words = re.split(r"[^a-z]+", os.path.basename(path).lower())
    found = {SPLIT_ALIASES[w] for w in words if w in SPLIT_ALIASES}
    return found.pop() if len(found) == 1 else None


def read_clip_list(path: str, split: Optional[str] = None) -> List[Clip]:
    """The rows of an official Kinetics CSV; `split` (any alias) overrides the split column.

    Without a split column the file name must say the split (`validate.csv`, `k600_train.csv`). A label
    column is optional (unlabelled test lists). Raises VideoATSError naming the file and line.
    """
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "not found"
        raise VideoATSError(f"annotation CSV {what}: {path} (give the official Kinetics list, e.g. validate.csv)")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise VideoATSError(f"cannot read {path} ({e}); give the official Kinetics CSV") from None
    columns = [c.strip().lower() for c in rows[0]] if rows else []
    missing = [c for c in HEADER[1:4] if c not in columns]
    if missing:
        raise VideoATSError(f"{path}: the header lacks {', '.join(missing)}; expected the official columns "
                            f"{','.join(HEADER)}")
    col = {c: i for i, c in enumerate(columns)}
    if split is not None:
        split = normalise_split(split, "--split")
    elif "split" not in col:
        split = _split_from_name(path)
        if split is None:
            raise VideoATSError(f"{path}: no split column and the file name does not say train, val or test; "
                                f"give --split")
    clips = []
    for number, cells in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        where = f"{path} line {number}"
        try:
            yid = cells[col["youtube_id"]].strip()
            start, end = int(float(cells[col["time_start"]])), int(float(cells[col["time_end"]]))
        except (IndexError, ValueError):
            raise VideoATSError(f"{where}: expected {','.join(HEADER)}; got {','.join(cells)[:80]!r}") from None
        label = cells[col["label"]].strip() if "label" in col and col["label"] < len(cells) else ""
        row_split = split or normalise_split(cells[col["split"]] if col["split"] < len(cells) else "", where)
        if not yid or any(bad in yid for bad in "/\\") or yid.startswith("."):
            raise VideoATSError(f"{where}: {yid!r} is not a YouTube id")
        if any(bad in label for bad in "/\\\0") or label in (".", ".."):
            raise VideoATSError(f"{where}: label {label!r} cannot be a folder name")
        if not 0 <= start < end:
            raise VideoATSError(f"{where}: the span {start}-{end} s is empty or negative")
        clips.append(Clip(yid, start, end, label, row_split))
    return clips


def render_list(clips: Sequence[Clip]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(clip.row() for clip in clips)
    return buf.getvalue()


def _merged_list(path: str, clips: Sequence[Clip]) -> List[Clip]:
    """`clips` after the rows an existing list at `path` already has; refuses a list it did not write."""
    if not os.path.lexists(path):
        return list(clips)
    refuse = f"{path} exists and was not written by prepare-kinetics; move it away or choose another OUT"
    try:
        existing = read_clip_list(path)
        with open(path, encoding="utf-8", newline="") as f:
            ours = f.read() == render_list(existing)
    except VideoATSError:
        ours = False
    if not ours:
        raise VideoATSError(refuse)
    have = {(c.youtube_id, c.start, c.end) for c in existing}
    return existing + [c for c in clips if (c.youtube_id, c.start, c.end) not in have]


# ---------------------------------------------------------------------------------------------- downloads


_CUT_NAME = re.compile(r"^(?P<id>.+)_(?P<start>\d+)_(?P<end>\d+)$")
_YTDLP_NAME = re.compile(r"\[(?P<id>[A-Za-z0-9_-]{11})\]$")


class DownloadIndex:
    """Raw downloads by YouTube id: whole videos (`ID.ext`, `Title [ID].ext`) and cut ones (`ID_START_END.ext`)."""

    def __init__(self, root: str, skip: Sequence[str] = ()):
        self.root = root
        self.whole: Dict[str, str] = {}
        self.cut: Dict[Tuple[str, int, int], str] = {}
        skip = {os.path.realpath(p) for p in skip}
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and os.path.realpath(os.path.join(folder, d)) not in skip)
            for name in sorted(files):  # any non-folder entry: a link or a special file is reported when opened
                stem, ext = os.path.splitext(name)
                if name.startswith(".") or ext.lower() not in VIDEO_EXTENSIONS:
                    continue
                path = os.path.join(folder, name)
                self.whole.setdefault(stem, path)
                bracket = _YTDLP_NAME.search(stem)
                if bracket:
                    self.whole.setdefault(bracket.group("id"), path)
                cut = _CUT_NAME.match(stem)
                if cut:
                    self.cut.setdefault((cut.group("id"), int(cut.group("start")), int(cut.group("end"))), path)

    def find(self, clip: Clip) -> Tuple[str, bool]:
        """(path, already cut to the span), or ("", False) when there is no download of the clip."""
        path = self.cut.get((clip.youtube_id, clip.start, clip.end))
        if path:
            return path, True
        path = self.whole.get(clip.youtube_id)
        return (path, False) if path else ("", False)


# ---------------------------------------------------------------------------------------------- one clip


def output_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """(height, width) scaled so the short side is `short_side` (never up; 0 keeps the size), both even as
    H.264 in yuv420p needs; the long side rounds as the loaders' own short-side scaling does."""
    scale = short_side / min(height, width) if 0 < short_side < min(height, width) else 1.0
    return tuple(max(2, int(round(side * scale / 2)) * 2) for side in (height, width))


@dataclass(frozen=True)
class Job:
    index: int  # the row's position in the list
    source: str
    already_cut: bool
    start: int  # the span in seconds, on the source's own clock
    end: int
    target: str
    short_side: int
    crf: int


def _open_failure(source: str, e: BaseException) -> DecodeFailure:
    """Why a source cannot be opened: missing, unreadable, empty, not a video or a damaged video."""
    size = check_readable(source)  # raises missing / unreadable
    if size == 0:
        return DecodeFailure("zero_frames", "the file is empty (0 bytes)")
    text = str(e).strip().splitlines()
    return classify_failure(source, DecodeFailure("corrupt", f"PyAV cannot open it ({text[0][:200] if text else e})"))


def _span_frames(container, stream, begin: Fraction, end: Fraction) -> Iterator[Tuple[object, int]]:
    """(frame, pts) of the frames shown in [begin, end) seconds of the stream's clock (its start is 0).

    Seeks to the key frame before `begin`; a demuxer that lands after `begin` is read again from the start.
    Timestamps are compared exactly (rationals); a frame without one follows the previous by the frame rate.
    """
    tb = stream.time_base
    origin = stream.start_time or 0
    rate = stream.average_rate or stream.guessed_rate or Fraction(30)
    step = max(1, round(1 / (rate * tb)))
    for seek in ([True, False] if begin > 0 else [False]):
        try:
            container.seek(origin + math.floor(begin / tb) if seek else origin, stream=stream, backward=True)
        except av.error.FFmpegError:
            continue
        previous = None
        try:
            for frame in container.decode(stream):
                pts = frame.pts if frame.pts is not None else (origin if previous is None else previous + step)
                if seek and previous is None and (pts - origin) * tb > begin:
                    break  # landed past the span's start: read from the beginning instead
                previous = pts
                t = (pts - origin) * tb
                if t >= end:
                    return
                if t >= begin:
                    yield frame, pts
            else:
                return
        except av.error.FFmpegError as e:
            raise DecodeFailure("corrupt", f"decoding stopped at {float((previous or origin) - origin) * tb:.2f} s "
                                           f"({str(e).strip()[:200]})") from None
    raise DecodeFailure("corrupt", "cannot seek in it")


def _upright_size(frame) -> Tuple[int, int]:
    return (frame.width, frame.height) if quarter_turns(frame) % 2 else (frame.height, frame.width)


def _to_output(frame, size: Tuple[int, int]):
    """The frame upright (display matrix applied, as the loaders decode it) in the output size, yuv420p."""
    if quarter_turns(frame):
        frame = av.VideoFrame.from_ndarray(display_rgb(frame), format="rgb24")
    return frame.reformat(width=size[1], height=size[0], format="yuv420p", interpolation="AREA")


def _encode_span(job: Job, tmp: str) -> Tuple[int, float]:
    """Write the span of `job.source` to `tmp` (MP4); (frames written, seconds covered)."""
    try:
        source = av.open(job.source)
    except Exception as e:  # FFmpeg says "invalid data" for anything it cannot read
        raise _open_failure(job.source, e) from None
    out = None
    try:
        if not source.streams.video:
            raise DecodeFailure("not_a_video", "the file has no video stream")
        stream = source.streams.video[0]
        tb = stream.time_base
        begin, end = (0, job.end - job.start) if job.already_cut else (job.start, job.end)
        first = offset = None
        count = 0
        for frame, pts in _span_frames(source, stream, Fraction(begin), Fraction(end)):
            if out is None:
                size = output_size(*_upright_size(frame), job.short_side)
                out = av.open(tmp, mode="w", format="mp4")
                ostream = out.add_stream("libx264", rate=stream.average_rate or stream.guessed_rate or 30)
                ostream.width, ostream.height, ostream.pix_fmt = size[1], size[0], "yuv420p"
                ostream.codec_context.time_base = tb
                ostream.options = {"crf": str(job.crf), "threads": "1"}
                first = pts
            # the source's timestamps from 0; a repeated or backward one (damaged files) moves up by a tick,
            # since the encoder takes strictly increasing ones only
            offset = pts - first if offset is None else max(pts - first, offset + 1)
            picture = _to_output(frame, size)
            picture.pts, picture.time_base = offset, tb
            for packet in ostream.encode(picture):
                out.mux(packet)
            count += 1
        if out is None:
            length = float(stream.duration * tb) if stream.duration else None
            ends = f" (the video is {length:.1f} s long)" if length else ""
            raise DecodeFailure("corrupt", f"no frame in the span {begin}-{end} s{ends}")
        for packet in ostream.encode():
            out.mux(packet)
        rate = stream.average_rate or stream.guessed_rate or 30
        return count, float(offset * tb + 1 / Fraction(rate))
    finally:
        if out is not None:
            out.close()
        source.close()


def prepare_clip(job: Job) -> dict:
    """Prepare one clip: {'status': ok | too_short | missing | unreadable | corrupt, 'detail', 'frames'}.

    A problem with the source is a status; a problem writing the output (disk full) is raised as OSError.
    """
    box = {}
    try:
        with native_stderr_silenced():
            atomic_write(job.target, lambda tmp: box.update(result=_encode_span(job, tmp)))
    except DecodeFailure as e:
        kind = e.reason if e.reason in ("missing", "unreadable") else "corrupt"
        return {"status": kind, "detail": str(e), "frames": 0}
    except OSError:
        raise
    except Exception as e:  # an encoder error on a strange source is that clip's problem, not the run's
        return {"status": "corrupt", "detail": f"cannot re-encode it ({type(e).__name__}: {str(e)[:200]})",
                "frames": 0}
    frames, seconds = box["result"]
    span = job.end - job.start
    if seconds < span - SHORT_TOLERANCE:
        return {"status": "too_short", "detail": f"the download covers {seconds:.1f} s of the {span} s span",
                "frames": frames}
    return {"status": "ok", "detail": "", "frames": frames}


# ---------------------------------------------------------------------------------------------- the run


def _ignore_sigint() -> None:
    """Workers finish their clip on Ctrl-C; the main process stops handing out new ones."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(jobs: Sequence[Job], workers: int, progress: bool) -> Iterator[Tuple[Job, dict]]:
    bar = tqdm(total=len(jobs), desc="prepare", unit="clip", file=sys.stderr, dynamic_ncols=True, leave=False,
               disable=not (progress and sys.stderr.isatty()))
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield job, prepare_clip(job)
                bar.update(1)
            return
        pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_ignore_sigint)
        try:
            futures = {pool.submit(prepare_clip, job): job for job in jobs}
            for future in as_completed(futures):
                yield futures[future], future.result()
                bar.update(1)
        except BrokenProcessPool:
            raise VideoATSError("a worker process died (out of memory, or FFmpeg crashed on a file); run the same "
                                "command again to resume, with --workers 1 to see which file") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def _scan_outputs(out_dir: str, clips: Sequence[Clip]) -> set:
    """Relative paths of finished outputs; removes the temp files a killed run left for planned clips."""
    planned: Dict[str, set] = {}
    for clip in clips:
        folder, name = os.path.split(clip.relpath)
        planned.setdefault(folder, set()).add(name)
    done = set()
    for folder, names in planned.items():
        full = os.path.join(out_dir, folder)
        if not os.path.isdir(full):
            continue
        for entry in os.scandir(full):
            if entry.name in names:
                done.add(os.path.join(folder, entry.name))
            elif entry.name.startswith(".") and entry.name.endswith(".tmp") \
                    and entry.name[1:].rsplit(".", 2)[0] in names:  # atomic_write's `.NAME.XXXXXX.tmp`
                os.remove(entry.path)
    return done


def prepare_kinetics(csv_path: str, downloads: str, out_dir: str, short_side: int = 256, crf: int = 23,
                     split: Optional[str] = None, workers: int = 1, progress: bool = False) -> dict:
    """Prepare every clip of an official Kinetics list (see the module docstring); a check-videos-style report.

    Inputs and outputs are checked before any clip is encoded. `exit_code` is 1 when clips are missing,
    unreadable or corrupt, as `check-videos` says of a list.
    """
    began = time.time()
    if short_side < 0 or short_side % 2:
        raise VideoATSError(f"--short-side {short_side}: give an even number of pixels (H.264 needs even sizes), "
                            f"or 0 to keep the size")
    if not 0 <= crf <= 51:
        raise VideoATSError(f"--crf {crf}: give 0 (lossless) to 51; 23 is x264's default")
    if workers < 1:
        raise VideoATSError(f"--workers must be at least 1, got {workers}")
    clips = read_clip_list(csv_path, split)
    if not clips:
        raise VideoATSError(f"{csv_path}: lists no clips")
    if not os.path.isdir(downloads):
        what = "is a file, not a folder" if os.path.exists(downloads) else "not found"
        raise VideoATSError(f"downloads folder {what}: {downloads} (give the folder of raw videos named by "
                            f"YouTube id)")
    out_dir = check_output_dir(out_dir)
    unique = list({(c.split, c.stem): c for c in clips}.values())
    lists = {}
    for name in dict.fromkeys(c.split for c in unique):
        path = os.path.join(out_dir, f"{name}.csv")
        lists[name] = (path, _merged_list(path, [c for c in unique if c.split == name]))

    index = DownloadIndex(downloads, skip=[out_dir] + [os.path.join(out_dir, name) for name in lists])
    done = _scan_outputs(out_dir, unique)
    outcome: Dict[int, dict] = {}
    jobs = []
    for number, clip in enumerate(unique):
        if clip.relpath in done:
            outcome[number] = {"status": "ok", "detail": "", "frames": None, "done_before": True}
            continue
        source, cut = index.find(clip)
        if not source:
            outcome[number] = {"status": "missing", "frames": 0,
                               "source": os.path.join(downloads, clip.youtube_id + ".*"),
                               "detail": f"no download named {clip.youtube_id}.* or {clip.stem}.*"}
            continue
        jobs.append(Job(number, source, cut, clip.start, clip.end, os.path.join(out_dir, clip.relpath),
                        short_side, crf))
    try:
        for job, result in _run(jobs, workers, progress):
            outcome[job.index] = dict(result, source=job.source)
    except OSError as e:  # writing, not reading, failed: no later clip would fare better
        raise VideoATSError(f"cannot write {e.filename or out_dir} ({e.strerror or e}); make room or fix the "
                            f"folder, then run the same command to resume") from None

    written = {name: atomic_write_text(path, render_list(rows)) for name, (path, rows) in lists.items()}
    counts = dict.fromkeys(COUNT_KINDS, 0)
    problems = []
    for number, clip in enumerate(unique):
        result = outcome[number]
        counts[result["status"]] += 1
        if result["status"] != "ok":
            problems.append({"index": number, "path": result["source"], "label": clip.label,
                             "problem": result["status"], "detail": result["detail"], "frames": result["frames"],
                             "youtube_id": clip.youtube_id, "clip": os.path.join(out_dir, clip.relpath)})
    bad = counts["missing"] + counts["unreadable"] + counts["corrupt"]
    return {
        "annotation": ", ".join(written.values()), "annotations": written, "format": "kinetics_csv",
        "csv": csv_path, "downloads": downloads, "out_dir": out_dir, "videos": len(unique),
        "counts": counts, "decodable": counts["ok"] + counts["too_short"], "problems": problems,
        "prepared": sum(1 for job in jobs if outcome[job.index]["status"] in ("ok", "too_short")),
        "already_done": sum(1 for r in outcome.values() if r.get("done_before")),
        "short_side": short_side, "crf": crf, "seconds": round(time.time() - began, 3),
        "clean_annotation": None, "clean_videos": None, "exit_code": 1 if bad else 0,
    }
