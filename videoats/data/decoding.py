"""Decode only the frames a clip needs, with decord first and PyAV as the fallback, under a timeout.

Kinetics copies are messy (missing, truncated, zero-frame files) and decord can hang on containers that
over-report their frame count (decord#373), so every read runs in a helper thread with a deadline and
ends in either frames or a `DecodeFailure` whose `reason` is one of REASONS. decord calls go through
ctypes, which releases the GIL, so a stuck decord call does not block the thread that waits for it; the
stuck thread is abandoned (a daemon) and the item is reported as a timeout.

Partially decodable videos: a video that stops before its container says it ends (a cut download, a
damaged stream) is *truncated*. Before any decoding, `scan_container` demuxes the whole file with PyAV
(packets only, no decoding: cheap) and compares where the packets end with the duration the container's
header declares (Matroska/WebM and MP4 write it at the start; a cut WebM keeps saying 10 s while its packets
stop at 4.64 s); a packet the demuxer had to cut short at the end of the file, or a read error, says the same.
Every read also decodes the last frame, so a declared frame count (MP4, AVI) that the decoder cannot reach
shows too. `VideoMeta.damage` says which. One policy follows from it: a truncated video is never tested on -
check-videos, eval, infer and infer --per-clip all report it as "corrupt" with that detail
(`refuse_truncated`) - while training may still draw its decodable frames (frames past the break are
clamped to the last good one, as for a short video), because a random augmentation clip loses little by
that and is not a reported number. The same scan gives every frame's presentation time, which
variable-frame-rate videos need (`VideoMeta.frame_times`).

Only decoding errors (FFmpeg's, decord's, the operating system's) turn into a DecodeFailure; any other
exception is a bug in this code or its caller and propagates as one.

Library noise: FFmpeg (inside PyAV and, separately, inside decord) and decord print their own log lines on
the C-level stderr for a damaged file, dozens per video and outside Python's control. Unless the user asked
for `--verbose` (environment variable VIDEOATS_VERBOSE, which DataLoader workers inherit), their log levels
are set to quiet and the process's stderr file descriptor points at /dev/null while a native decoder call
runs; the failure reaches the user once, in our words, through the DecodeFailure the caller reports.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import stat
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import numpy as np

logger = logging.getLogger("videoats.data")

# not_a_video: files.py; not_supported: a stream or device this FFmpeg cannot read (inference/streams.py)
REASONS = ("missing", "unreadable", "not_a_video", "corrupt", "zero_frames", "timeout", "not_supported")
BACKENDS = ("decord", "pyav")
VERBOSE_ENV = "VIDEOATS_VERBOSE"  # set by the CLI for --verbose

try:  # decord has no wheels for some platforms; PyAV then does all the work
    import decord as _decord
except Exception:  # pragma: no cover - depends on the platform
    _decord = None

# a decord get_batch call at most, in frame bytes (1080p: 10 frames; 4K: 2); the call peaks at about 3x that
DECORD_CHUNK_BYTES = 64 << 20
# Container formats whose header states the duration independently of the packets (so that a cut file shows)
_DURATION_IN_HEADER = ("matroska", "webm", "mov", "mp4")


# ---------------------------------------------------------------------------------------------- library logs

_log_state = {"verbose": None}
_stderr_lock = threading.Lock()
_stderr_state = {"depth": 0, "saved": None}


def decoder_errors() -> Tuple[type, ...]:
    """What a decoder raises for a bad file, as opposed to a bug in our code, which must propagate.

    PyAV is imported here, not at the top, so that starting the CLI loads no decoder."""
    import av

    return (av.error.FFmpegError, OSError, EOFError) + ((_decord.DECORDError,) if _decord is not None else ())


def _verbose() -> bool:
    return bool(os.environ.get(VERBOSE_ENV))


def _set_library_levels(verbose: bool) -> None:
    """Quiet (or, for --verbose, talkative) FFmpeg/decord log levels, set again only when the wish changes."""
    if _log_state["verbose"] == verbose:
        return
    import av.logging

    av.logging.set_level(av.logging.WARNING if verbose else None)  # None: PyAV keeps FFmpeg silent
    if _decord is not None:
        _decord.logging.set_level(_decord.logging.WARNING if verbose else _decord.logging.QUIET)
    _log_state["verbose"] = verbose


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at /dev/null while native decoders run (nested and threaded use counted).

    decord's own error lines (`video_reader.cc: ERROR opening ...`) bypass every log level, so the
    descriptor itself is redirected; Python-level writes are not affected when they go through another
    stream, and the descriptor is restored when the last concurrent decode ends. No-op with --verbose.
    """
    verbose = _verbose()
    _set_library_levels(verbose)
    if verbose:
        yield
        return
    with _stderr_lock:
        if _stderr_state["depth"] == 0:
            try:
                saved = os.dup(2)
            except OSError:  # no stderr at all: nothing to silence
                saved = None
            if saved is not None:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
            _stderr_state["saved"] = saved
        _stderr_state["depth"] += 1
    try:
        yield
    finally:
        with _stderr_lock:
            _stderr_state["depth"] -= 1
            if _stderr_state["depth"] == 0 and _stderr_state["saved"] is not None:
                os.dup2(_stderr_state["saved"], 2)
                os.close(_stderr_state["saved"])
                _stderr_state["saved"] = None


class DecodeFailure(Exception):
    """A video that cannot give frames; `reason` is one of REASONS, `detail` what the decoder said."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class VideoMeta:
    num_frames: int
    fps: float
    height: int  # of the decoded frames
    width: int
    backend: str
    declared_frames: int = 0  # what the container claims; more than num_frames means a truncated file
    damage: str = ""  # why the file is cut or damaged (see the module docstring); "" for a whole file
    # presentation time (s, from the first frame) of every frame, when the container gives one per frame
    frame_times: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def truncated(self) -> bool:
        return bool(self.damage) or self.declared_frames > self.num_frames

    @property
    def truncation(self) -> str:
        """Why the video counts as truncated, in words ("" when it does not)."""
        short = self.declared_frames > self.num_frames
        frames = f"{self.num_frames} of {self.declared_frames} frames decodable" if short else ""
        if self.damage:
            return f"{self.damage} ({frames})" if frames else self.damage
        return f"truncated: {frames}" if frames else ""


@dataclass
class ContainerScan:
    """What demuxing a whole file (packets only) says: frame times, frame count, where the data end."""

    frame_times: np.ndarray  # video packets' presentation times, sorted, s from the first (empty: none given)
    video_packets: int  # video packets with data (the frame count when the header states none)
    declared_frames: int  # the header's frame count (0: not stated)
    damage: str  # "" or why the file is cut or damaged


# Given (num_frames, fps) of the video, the sorted unique frame indices to decode.
IndexPicker = Callable[[int, float], np.ndarray]


def decord_available() -> bool:
    return _decord is not None


def _probe_size(path: str) -> Optional[Tuple[int, int]]:
    """Stored (height, width) from the container header, without decoding a frame; None when PyAV cannot
    tell (no video stream, a file it cannot open: the decoder then says why)."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            return int(stream.codec_context.height), int(stream.codec_context.width)
    except decoder_errors():
        return None


def _scaled_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
    if short_side <= 0 or min(height, width) <= short_side:
        return height, width
    if height <= width:
        return short_side, int(round(width * short_side / height / 2)) * 2
    return int(round(height * short_side / width / 2)) * 2, short_side


def scan_container(path: str) -> Optional[ContainerScan]:
    """Demux every packet of every stream (no decoding) and compare where they end with the header.

    None when PyAV cannot open the file or it has no video stream (the decoders then say why). Packet ends
    are taken over all streams, so a soundtrack longer than the picture is not mistaken for a cut; a packet
    without a duration lasts its stream's step between packets (a frame period for the first video packets),
    so the tolerance can be half a frame period.
    """
    import av

    try:
        container = av.open(path)
    except decoder_errors():
        return None
    with container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        period = 1.0 / float(rate) if rate else 0.0
        pts, count, end, earliest, cut, error = [], 0, None, None, False, ""
        last_start, gap = {}, {}  # per stream: the latest packet start, the step between its packets
        try:
            for packet in container.demux():
                if not packet.size:
                    continue
                video = packet.stream.index == stream.index
                count += video
                cut = cut or packet.is_corrupt
                if packet.pts is None or packet.time_base is None:
                    continue
                start = float(packet.pts * packet.time_base)
                index = packet.stream.index
                if index in last_start and start > last_start[index]:
                    gap[index] = start - last_start[index]
                last_start[index] = max(start, last_start.get(index, start))
                # Matroska stores no duration for most blocks: a packet lasts as long as its stream's step
                length = (float(packet.duration * packet.time_base) if packet.duration else
                          gap.get(index, period if video else 0.0))
                end = start + length if end is None else max(end, start + length)
                earliest = start if earliest is None else min(earliest, start)
                if video:
                    pts.append(start)
        except decoder_errors() as e:
            error = _first_line(e)
        times = np.sort(np.asarray(pts, dtype=np.float64))
        first = float(times[0]) if len(times) else 0.0
        damage = ""
        if error:
            damage = f"truncated: the demuxer stopped ({error})"
        elif cut:
            damage = "truncated: the file ends inside a packet"
        elif container.duration and end is not None and any(k in container.format.name for k in _DURATION_IN_HEADER):
            declared = container.duration / 1e6
            # measured from the earliest packet (an AAC track's priming samples start before 0, and muxers
            # count them) or from 0 (an MP4 edit list may delay the first frame), whichever is longer: a good
            # file must never be refused for the way its header counts
            span = max(end - min((container.start_time or 0) / 1e6, earliest), end)
            if span < declared - max(0.5 * period, 1e-3):
                damage = f"truncated: the container says {declared:.2f} s but its data stop at {span:.2f} s"
        return ContainerScan(times - first, count, int(stream.frames or 0), damage)


_DECORD_FAILED = threading.Event()  # set once a decord call raised in this process (`decord_failed`)


def decord_failed() -> bool:
    """Whether a decord call raised in this process. A reader that failed mid-decode can leave a native thread
    that aborts the interpreter's teardown ("terminate called without an active exception", exit -6) after the
    command has finished; the CLI then ends the process without that teardown (`cli.console_main`)."""
    return _DECORD_FAILED.is_set()


def _read_decord(path: str, pick: IndexPicker, short_side: int, num_threads: int,
                 transform: Optional["FrameTransform"] = None):
    """decord's get_batch in chunks of at most DECORD_CHUNK_BYTES of frames.

    With a `transform`, the reader is closed while a chunk is converted and opened again for the next one:
    an open decord reader keeps decoding ahead in the background into an unbounded queue of full-size
    frames (measured: +1.5 GB over 152 1080p frames when the consumer is slow), so memory would follow the
    conversion's speed instead of the chunk size.
    """
    height, width = -1, -1
    stored = _probe_size(path) or (1080, 1920)  # unknown: chunks sized for 1080p
    if short_side > 0:
        sh, sw = _scaled_size(*stored, short_side)
        if (sh, sw) != stored:
            height, width = sh, sw
            stored = (sh, sw)

    def open_reader():
        try:
            return _decord.VideoReader(path, ctx=_decord.cpu(0), width=width, height=height,
                                       num_threads=num_threads)
        except decoder_errors() + (RuntimeError,) as e:  # decord says "Error reading" with a bare RuntimeError
            _DECORD_FAILED.set()
            raise DecodeFailure("corrupt", f"decord cannot open it ({_first_line(e)})") from None

    reader = open_reader()
    num_frames = len(reader)
    if num_frames <= 0:
        raise DecodeFailure("zero_frames", "the video stream has no frames")
    fps = float(reader.get_avg_fps() or 0.0)
    indices = np.asarray(pick(num_frames, fps), dtype=np.int64)
    unique, inverse = np.unique(indices, return_inverse=True)  # short videos repeat clamped indices
    chunk = max(1, DECORD_CHUNK_BYTES // max(1, stored[0] * stored[1] * 3))
    pieces, height, width = [], 0, 0
    for at in range(0, len(unique), chunk):
        wanted = unique[at:at + chunk].tolist()
        if reader is None:
            reader = open_reader()
        try:
            batch = reader.get_batch(wanted).asnumpy()
        except decoder_errors() + (RuntimeError,) as e:
            _DECORD_FAILED.set()
            raise DecodeFailure("corrupt", f"decord get_batch failed ({_first_line(e)})") from None
        if batch.shape[0] != len(wanted):
            raise DecodeFailure("corrupt", f"decord returned {batch.shape[0]} of {len(wanted)} frames")
        height, width = batch.shape[1:3]
        if transform is not None:
            reader = None  # closed while this chunk is converted (see above)
            pieces.extend(transform(frame) for frame in batch)
        else:
            pieces.append(batch)
        del batch
    del reader
    frames = np.stack(pieces) if transform is not None else np.concatenate(pieces)
    frames = frames[inverse.reshape(-1)] if len(unique) != len(indices) else frames
    return frames, indices, VideoMeta(num_frames, fps, height, width, "decord", num_frames)


def _read_pyav(path: str, pick: IndexPicker, short_side: int, num_threads: int,
               transform: Optional["FrameTransform"] = None, packets: int = 0):
    """Decode from the start, converting only the wanted frames; frame i is the i-th decoded frame.

    Counting decoded frames (not timestamps) keeps indices right on variable-frame-rate files. `packets`:
    the video packet count `scan_container` found, the frame count when the header states none.
    """
    import av

    try:
        container = av.open(path)
    except decoder_errors() as e:
        raise DecodeFailure("corrupt", f"PyAV cannot open it ({_first_line(e)})") from None
    try:
        if not container.streams.video:
            raise DecodeFailure("zero_frames", "the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if num_threads > 0:
            stream.codec_context.thread_count = num_threads
        num_frames = int(stream.frames or 0) or int(packets)
        declared = num_frames
        if num_frames <= 0:
            raise DecodeFailure("zero_frames", "the video stream has no frames")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        indices = np.asarray(pick(num_frames, fps), dtype=np.int64)
        wanted = set(indices.tolist())
        last_wanted = int(indices.max())
        height, width = _scaled_size(stream.codec_context.height, stream.codec_context.width, short_side)
        convert = (lambda f: transform(_to_rgb(f, height, width))) if transform is not None else (
            lambda f: _to_rgb(f, height, width))
        got = {}
        decoded = 0
        last_frame = None
        size = (0, 0)
        try:
            for frame in container.decode(stream):
                if decoded in wanted or decoded == last_wanted:
                    got[decoded] = convert(frame)
                    size = (frame.height, frame.width)
                last_frame = frame
                decoded += 1
                if decoded > last_wanted:
                    break
        except av.error.FFmpegError as e:
            if decoded == 0:
                raise DecodeFailure("corrupt", f"PyAV decode failed ({_first_line(e)})") from None
        if decoded == 0:
            raise DecodeFailure("zero_frames", "no frame could be decoded")
        if decoded <= last_wanted:  # shorter than the header said: clamp like the protocol clamps
            if decoded - 1 not in got:
                got[decoded - 1] = convert(last_frame)
            num_frames = decoded
        frames = np.stack([got[min(i, decoded - 1)] for i in indices.tolist()])
        if transform is None:
            size = frames.shape[1:3]
        return frames, indices, VideoMeta(num_frames, fps, int(size[0]), int(size[1]), "pyav", declared)
    finally:
        container.close()


def quarter_turns(frame) -> int:
    """How many quarter turns a PyAV frame's display matrix asks for (decord applies it, PyAV does not)."""
    return int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) % 4


def _to_rgb(frame, height: int, width: int) -> np.ndarray:
    """RGB in display orientation, as decord gives it (decord applies the display matrix, PyAV does not)."""
    if (frame.height, frame.width) != (height, width):
        array = frame.to_ndarray(format="rgb24", height=height, width=width)
    else:
        array = frame.to_ndarray(format="rgb24")
    turns = quarter_turns(frame)
    return np.ascontiguousarray(np.rot90(array, turns)) if turns else array


def display_rgb(frame) -> np.ndarray:
    """A PyAV frame as uint8 RGB (H, W, 3) at its size, upright (its display matrix applied)."""
    return _to_rgb(frame, frame.height, frame.width)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


_READERS = {"decord": _read_decord, "pyav": _read_pyav}
# Applied to every decoded frame (uint8 (H, W, 3) RGB, display orientation) as soon as it is decoded, so
# that only its result is kept: e.g. the protocol's normalise-and-resize, so no full-size copy piles up.
FrameTransform = Callable[[np.ndarray], np.ndarray]


def scan_file(path: str, timeout: float = 60.0) -> Optional[ContainerScan]:
    """`scan_container` under the decode timeout, with the libraries' noise silenced; None when the file
    cannot be scanned (then the decoders say why). DecodeFailure for a missing, unreadable or empty file."""
    if check_readable(path) == 0:
        raise DecodeFailure("zero_frames", "the file is empty (0 bytes)")
    with native_stderr_silenced():
        return run_with_timeout(scan_container, timeout, path)


def run_with_timeout(fn: Callable, timeout: float, *args):
    """fn(*args) in a daemon thread; DecodeFailure('timeout') when it has not returned in `timeout` s.

    A thread (not a signal) so that it works in the main thread, in DataLoader workers and in any other
    thread alike; the abandoned thread keeps running until the library returns, if ever.
    """
    if not timeout or timeout <= 0:
        return fn(*args)
    box = {}
    done = threading.Event()

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # handed to the caller below
            box["error"] = e
        finally:
            done.set()

    thread = threading.Thread(target=target, name="videoats-decode", daemon=True)
    thread.start()
    if not done.wait(timeout):
        raise DecodeFailure("timeout", f"no result after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_readable(path: str) -> int:
    """The file's size, or DecodeFailure saying truly why it cannot be read (missing vs. unreadable)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DecodeFailure("missing", "no such file") from None
    except NotADirectoryError:
        raise DecodeFailure("missing", "no such file (a folder on its path is a file)") from None
    except OSError as e:
        raise DecodeFailure("unreadable", f"cannot look at it ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise DecodeFailure("unreadable", "it is a folder, not a video file")
    if not stat.S_ISREG(info.st_mode):
        raise DecodeFailure("unreadable", "not a regular file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        what = "permission denied" if e.errno in (errno.EACCES, errno.EPERM) else (e.strerror or str(e))
        raise DecodeFailure("unreadable", f"cannot be opened ({what})") from None
    return info.st_size


def _with_last_frame(pick: IndexPicker) -> IndexPicker:
    """`pick` plus the last declared frame, so that every read sees whether the video decodes to its end."""

    def picker(num_frames: int, fps: float) -> np.ndarray:
        wanted = np.asarray(pick(num_frames, fps), dtype=np.int64)
        return np.append(wanted, max(num_frames - 1, 0))

    return picker


def read_frames(path: str, pick: IndexPicker, backend: str = "decord", short_side: int = 0,
                timeout: float = 60.0, num_threads: int = 1, fallback: bool = True,
                transform: Optional[FrameTransform] = None, scan: Optional[ContainerScan] = None):
    """(frames (N, ...), indices (N,), VideoMeta) for the indices `pick` chooses.

    Frames are uint8 (N, H, W, 3) RGB, or what `transform` makes of each. `backend` is tried first; the
    other one is tried when it fails (decord missing, a decord error, or a decord timeout), each attempt
    bounded by `timeout` seconds. Raises DecodeFailure. `scan`: a `scan_container` result the caller already
    has (else the file is scanned here). A truncated video comes back with `meta.truncated` set; callers
    that test on videos pass meta to `refuse_truncated`.
    """
    if check_readable(path) == 0:
        raise DecodeFailure("zero_frames", "the file is empty (0 bytes)")
    order = [backend] + ([b for b in BACKENDS if b != backend] if fallback else [])
    if not decord_available():
        order = [b for b in order if b != "decord"] or ["pyav"]
    if scan is None:
        scan = scan_file(path, timeout)
    failure: Optional[DecodeFailure] = None
    checked = _with_last_frame(pick)
    for name in order:
        extra = {"packets": scan.video_packets if scan else 0} if name == "pyav" else {}
        try:
            with native_stderr_silenced():
                frames, indices, meta = run_with_timeout(_READERS[name], timeout, path, checked, short_side,
                                                         num_threads, transform, *extra.values())
            if scan is not None:
                meta.damage = scan.damage
                meta.declared_frames = max(meta.declared_frames, scan.declared_frames)
                if len(scan.frame_times) == meta.num_frames:
                    meta.frame_times = scan.frame_times
            return frames[:-1], indices[:-1], meta
        except DecodeFailure as e:
            if failure is not None and failure.reason in ("timeout", "zero_frames") and e.reason == "corrupt":
                pass  # keep the more telling first reason
            else:
                failure = e
            if name != order[-1]:
                logger.info("%s: %s failed (%s), trying %s", path, name, e, order[-1])
        except decoder_errors() as e:  # a decoder error outside the readers' own checks is still a bad file
            failure = DecodeFailure("corrupt", f"{name}: {_first_line(e)}")
    raise failure


def refuse_truncated(meta: VideoMeta) -> VideoMeta:
    """`meta`, or DecodeFailure('corrupt') for a truncated video (the testing side of the policy above)."""
    if meta.truncated:
        raise DecodeFailure("corrupt", meta.truncation)
    return meta


def read_meta(path: str, backend: str = "decord", timeout: float = 60.0) -> VideoMeta:
    """Frame count, fps and size; decodes the first and last frame so that truncation shows."""

    def ends(num_frames: int, fps: float) -> np.ndarray:
        return np.unique(np.array([0, max(num_frames - 1, 0)], dtype=np.int64))

    _, _, meta = read_frames(path, ends, backend=backend, timeout=timeout)
    if not math.isfinite(meta.fps):
        meta.fps = 0.0
    return meta
