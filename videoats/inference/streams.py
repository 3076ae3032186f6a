"""`infer` on live and piped video: network streams (rtsp://, http(s)://, any URL FFmpeg reads), a camera
(/dev/video*, V4L2) and standard input (`-`), decoded with PyAV as the frames come.

Why separate from files: a stream has no length, no index and no end to plan clips against, so it is answered
window by window (`stream_windows`, the clips `infer --per-clip` takes) as each window's last frame arrives,
and the answer for the whole stream is built from the windows seen. What FFmpeg cannot open is "not
supported" (a protocol it lacks) or unreachable, never "missing": there is no file to be missing.
"""
from __future__ import annotations

import re
import sys
import time
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch

from ..data.decoding import DecodeFailure, decoder_errors, native_stderr_silenced
from ..summary import top_k
from .predict import stream_windows
from .predictor import Predictor

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
STDIN = "-"
DEFAULT_STREAM_FPS = 30.0  # when a stream states no frame rate (a raw pipe)


def is_stream(source: str) -> bool:
    """A URL, a V4L2 camera device or `-` (standard input): inputs read as they come, not as files."""
    return source == STDIN or bool(_URL.match(source)) or source.startswith("/dev/video")


def open_stream(source: str, timeout: float = 30.0):
    """A PyAV input container for `source`, or DecodeFailure: `not_supported` for a protocol or device this
    FFmpeg lacks, `unreadable` for one that does not answer."""
    import av

    options = {"rw_timeout": str(int(timeout * 1e6))} if _URL.match(source) and timeout else {}
    try:
        if source == STDIN:
            return av.open(sys.stdin.buffer, mode="r")
        if source.startswith("/dev/video"):
            return av.open(source, format="v4l2")
        return av.open(source, options=options, timeout=timeout or None)
    except (av.error.ProtocolNotFoundError, av.error.FFmpegError, ValueError) as e:
        text = str(e)
        if isinstance(e, av.error.ProtocolNotFoundError) or "Protocol not found" in text or \
                "Unknown input format" in text or isinstance(e, ValueError):
            raise DecodeFailure("not_supported", f"this FFmpeg cannot read it ({text.splitlines()[0][:160]})") from None
        raise DecodeFailure("unreadable", f"cannot open the stream ({text.splitlines()[0][:160]})") from None


def stream_frames(container) -> Tuple[Iterator[np.ndarray], float]:
    """(RGB uint8 frames as they are decoded, the stream's frame rate)."""
    if not container.streams.video:
        raise DecodeFailure("not_a_video", "the stream has no video")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else DEFAULT_STREAM_FPS

    def frames() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except decoder_errors():  # a dropped connection or a cut pipe ends the stream where it broke
            return

    return frames(), fps


def predict_stream(predictor: Predictor, source: str, topk: int = 5, stride: Optional[float] = None,
                   on_window: Optional[Callable[[dict], None]] = None, timeout: float = 30.0) -> dict:
    """Every window of `source` (see `stream_windows`), `on_window` called as each completes; the answer
    lists them under `per_clip` with the stream's top-k (each label's probability averaged over the windows:
    `score` is that mean probability)."""
    started = time.perf_counter()
    with native_stderr_silenced():
        container = open_stream(source, timeout)
    try:
        frames, fps = stream_frames(container)
        windows, probabilities = [], []
        for window in stream_windows(predictor, frames, fps, stride=stride, topk=topk,
                                     probabilities_out=probabilities):
            windows.append(window)
            if on_window is not None:
                on_window(window)
    finally:
        container.close()
    if not windows:
        raise DecodeFailure("zero_frames", "the stream gave no frame")
    mean = torch.stack(probabilities).double().mean(dim=0)  # every label's probability over the windows
    return {"path": source, "stream": True, "fps": round(fps, 4), "clips": len(windows),
            "duration_s": windows[-1]["end_s"], "topk": top_k(mean, predictor.label_names, topk),
            "per_clip": windows, "seconds": round(time.perf_counter() - started, 3)}
