"""Decode only the frames a clip needs, with decord first and PyAV as the fallback, under a timeout.

Kinetics copies are messy (missing, truncated, zero-frame files) and decord can hang on containers that
over-report their frame count (decord#373), so every read runs in a helper thread with a deadline and
ends in either frames or a `DecodeFailure` whose `reason` is one of REASONS. decord calls go through
ctypes, which releases the GIL, so a stuck decord call does not block the thread that waits for it; the
stuck thread is abandoned (a daemon) and the item is reported as a timeout.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np

logger = logging.getLogger("videoats.data")

REASONS = ("missing", "corrupt", "zero_frames", "timeout")
BACKENDS = ("decord", "pyav")

try:  # decord has no wheels for some platforms; PyAV then does all the work
    import decord as _decord
except Exception:  # pragma: no cover - depends on the platform
    _decord = None


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

    @property
    def truncated(self) -> bool:
        return self.declared_frames > self.num_frames


# Given (num_frames, fps) of the video, the sorted unique frame indices to decode.
IndexPicker = Callable[[int, float], np.ndarray]


def decord_available() -> bool:
    return _decord is not None


def _probe_size(path: str) -> Tuple[int, int]:
    """Stored (height, width) from the container header, without decoding a frame."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return int(stream.codec_context.height), int(stream.codec_context.width)


def _scaled_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
    if short_side <= 0 or min(height, width) <= short_side:
        return height, width
    if height <= width:
        return short_side, int(round(width * short_side / height / 2)) * 2
    return int(round(height * short_side / width / 2)) * 2, short_side


def _read_decord(path: str, pick: IndexPicker, short_side: int, num_threads: int):
    height, width = -1, -1
    if short_side > 0:
        h, w = _probe_size(path)
        sh, sw = _scaled_size(h, w, short_side)
        if (sh, sw) != (h, w):
            height, width = sh, sw
    try:
        reader = _decord.VideoReader(path, ctx=_decord.cpu(0), width=width, height=height,
                                     num_threads=num_threads)
    except Exception as e:  # decord raises DECORDError (a RuntimeError) for unreadable files
        raise DecodeFailure("corrupt", f"decord cannot open it ({_first_line(e)})") from None
    num_frames = len(reader)
    if num_frames <= 0:
        raise DecodeFailure("zero_frames", "the video stream has no frames")
    fps = float(reader.get_avg_fps() or 0.0)
    indices = np.asarray(pick(num_frames, fps), dtype=np.int64)
    unique, inverse = np.unique(indices, return_inverse=True)  # short videos repeat clamped indices
    try:
        frames = reader.get_batch(unique.tolist()).asnumpy()
    except Exception as e:
        raise DecodeFailure("corrupt", f"decord get_batch failed ({_first_line(e)})") from None
    finally:
        del reader
    if frames.shape[0] != len(unique):
        raise DecodeFailure("corrupt", f"decord returned {frames.shape[0]} of {len(unique)} frames")
    frames = frames[inverse.reshape(-1)] if len(unique) != len(indices) else frames
    return frames, indices, VideoMeta(num_frames, fps, frames.shape[1], frames.shape[2], "decord", num_frames)


def _count_packets(container, stream) -> int:
    count = 0
    for packet in container.demux(stream):
        if packet.size:
            count += 1
    container.seek(0)
    return count


def _read_pyav(path: str, pick: IndexPicker, short_side: int, num_threads: int):
    """Decode from the start, converting only the wanted frames; frame i is the i-th decoded frame.

    Counting decoded frames (not timestamps) keeps indices right on variable-frame-rate files.
    """
    import av

    try:
        container = av.open(path)
    except Exception as e:
        raise DecodeFailure("corrupt", f"PyAV cannot open it ({_first_line(e)})") from None
    try:
        if not container.streams.video:
            raise DecodeFailure("zero_frames", "the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if num_threads > 0:
            stream.codec_context.thread_count = num_threads
        num_frames = int(stream.frames or 0)
        if num_frames <= 0:
            num_frames = _count_packets(container, stream)
        declared = num_frames
        if num_frames <= 0:
            raise DecodeFailure("zero_frames", "the video stream has no frames")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        indices = np.asarray(pick(num_frames, fps), dtype=np.int64)
        wanted = set(indices.tolist())
        last_wanted = int(indices.max())
        height, width = _scaled_size(stream.codec_context.height, stream.codec_context.width, short_side)
        got = {}
        decoded = 0
        last_frame = None
        try:
            for frame in container.decode(stream):
                if decoded in wanted or decoded == last_wanted:
                    got[decoded] = _to_rgb(frame, height, width)
                last_frame = frame
                decoded += 1
                if decoded > last_wanted:
                    break
        except av.error.FFmpegError as e:
            if decoded == 0:
                raise DecodeFailure("corrupt", f"PyAV decode failed ({_first_line(e)})") from None
            logger.warning("%s: decoding stopped at frame %d of %d (%s)", path, decoded, num_frames,
                           _first_line(e))
        if decoded == 0:
            raise DecodeFailure("zero_frames", "no frame could be decoded")
        if decoded <= last_wanted:  # shorter than the header said: clamp like the protocol clamps
            if decoded - 1 not in got:
                got[decoded - 1] = _to_rgb(last_frame, height, width)
            num_frames = decoded
        frames = np.stack([got[min(i, decoded - 1)] for i in indices.tolist()])
        return frames, indices, VideoMeta(num_frames, fps, frames.shape[1], frames.shape[2], "pyav", declared)
    finally:
        container.close()


def _to_rgb(frame, height: int, width: int) -> np.ndarray:
    """RGB in display orientation, as decord gives it (decord applies the display matrix, PyAV does not)."""
    if (frame.height, frame.width) != (height, width):
        array = frame.to_ndarray(format="rgb24", height=height, width=width)
    else:
        array = frame.to_ndarray(format="rgb24")
    quarter_turns = int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(array, quarter_turns)) if quarter_turns else array


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


_READERS = {"decord": _read_decord, "pyav": _read_pyav}


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


def read_frames(path: str, pick: IndexPicker, backend: str = "decord", short_side: int = 0,
                timeout: float = 60.0, num_threads: int = 1, fallback: bool = True):
    """(frames uint8 (N, H, W, 3) RGB, indices (N,), VideoMeta) for the indices `pick` chooses.

    `backend` is tried first; the other one is tried when it fails (decord missing, a decord error, or a
    decord timeout), each attempt bounded by `timeout` seconds. Raises DecodeFailure.
    """
    if not os.path.isfile(path):
        raise DecodeFailure("missing", "no such file")
    if os.path.getsize(path) == 0:
        raise DecodeFailure("zero_frames", "the file is empty (0 bytes)")
    order = [backend] + ([b for b in BACKENDS if b != backend] if fallback else [])
    if not decord_available():
        order = [b for b in order if b != "decord"] or ["pyav"]
    failure: Optional[DecodeFailure] = None
    for name in order:
        try:
            return run_with_timeout(_READERS[name], timeout, path, pick, short_side, num_threads)
        except DecodeFailure as e:
            if failure is not None and failure.reason in ("timeout", "zero_frames") and e.reason == "corrupt":
                pass  # keep the more telling first reason
            else:
                failure = e
            if name != order[-1]:
                logger.info("%s: %s failed (%s), trying %s", path, name, e, order[-1])
        except Exception as e:  # an unexpected decoder error is still a bad file, not a crash
            failure = DecodeFailure("corrupt", f"{name}: {_first_line(e)}")
    raise failure


def read_meta(path: str, backend: str = "decord", timeout: float = 60.0) -> VideoMeta:
    """Frame count, fps and size; decodes the first and last frame so that truncation shows."""

    def ends(num_frames: int, fps: float) -> np.ndarray:
        return np.unique(np.array([0, max(num_frames - 1, 0)], dtype=np.int64))

    _, _, meta = read_frames(path, ends, backend=backend, timeout=timeout)
    if not math.isfinite(meta.fps):
        meta.fps = 0.0
    return meta
