"""The Python inference API: load a model once, then ask it about videos, frames or a stream of frames.

Why a class: loading a model (config, checkpoint metadata, weights, label names) costs far more than one
small video, so a program that classifies many videos or watches a camera loads it once and keeps it. The
answers are the ones `videoats infer` prints with `--json` (the same clips, crops, aggregation and label
names), so what a user tried on the command line holds in their program.

    import videoats

    recognizer = videoats.Recognizer("demo")                  # the model shipped in the package
    answer = recognizer.predict("clip.mp4")                   # whole video: clips covering it
    print(answer["topk"][0]["label"], answer["topk"][0]["score"])
    answers = recognizer.predict(["a.mp4", "b.webm"])         # one answer per file, bad ones with "error"
    answer = recognizer.predict(frames, fps=30)               # uint8 (T, H, W, 3) numpy array or tensor
    for window in recognizer.stream(camera_frames, fps=30):   # a sliding window over a stream of frames
        print(window["start_s"], window["topk"][0]["label"])
    for window in recognizer.stream("rtsp://camera/live"):    # or a URL, /dev/video0, "-" (stdin)
        print(window["start_s"], window["topk"][0]["label"])
"""
from __future__ import annotations

import math
import os
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
from torch import Tensor

from .data.decoding import DecodeFailure
from .errors import VideoATSError
from .inference.predict import predict_frames, predict_video, stream_windows
from .inference.predictor import Predictor, load_predictor
from .inference.shipped import config_path
from .inference.streams import open_stream, stream_frames

PathLike = Union[str, "os.PathLike[str]"]


class Recognizer:
    """An action recognition model loaded once, answering for videos, frames and streams of frames.

    Args:
        checkpoint: a checkpoint file, `zoo:NAME` (published weights, downloaded once), or `"demo"` (the
            model shipped in the package). A videoats checkpoint also gives the model, its config and label
            names; other weights need `model`.
        model: a registered model name (see `videoats models`), when the checkpoint does not name one.
        config: a YAML config file or a packaged config's name (`"synthetic/benchmark"`); by default the
            checkpoint's stored config, else the model's own clip size.
        device: `"cpu"`, `"cuda"` or `"auto"` (the GPU when there is one).
        ats: `"on"` / `"off"` (or True / False) to force Adaptive Token Sampling; None keeps the
            checkpoint's setting (the shipped model runs ATS at the budget its README figures use).
        labels: a file of label names, one a line, replacing the checkpoint's.
        views: `"CLIPSxCROPS"`, e.g. `"3x1"`; by default whole-video answers use clips that cover the video.
        overrides: config `KEY VALUE` pairs, as on the command line (e.g. `["TEST.BATCH_SIZE", "4"]`).

    Raises:
        VideoATSError: a missing checkpoint, an unknown model, labels that do not fit, and other setup errors,
            each with one line saying what to do.
    """

    def __init__(self, checkpoint: Optional[PathLike] = None, *, model: Optional[str] = None,
                 config: Optional[PathLike] = None, device: Optional[str] = None,
                 ats: Union[None, bool, str] = None, labels: Optional[PathLike] = None,
                 views: Optional[str] = None, overrides: Sequence[str] = ()):
        opts = list(overrides)
        if device is not None:
            opts += ["DEVICE", str(device)]
        if isinstance(ats, bool):
            ats = "on" if ats else "off"
        self.predictor: Predictor = load_predictor(
            config=config_path(os.fspath(config)) if config else None, model_name=model,
            checkpoint=os.fspath(checkpoint) if checkpoint else None, ats=ats, opts=opts,
            labels_file=os.fspath(labels) if labels else None, views=views)

    @property
    def label_names(self) -> List[str]:
        """The class names, in the order of the model's outputs."""
        return list(self.predictor.label_names)

    @property
    def warnings(self) -> List[str]:
        """What loading noticed (random weights, interpolated embeddings, ignored config keys)."""
        return list(self.predictor.warnings)

    def describe(self) -> dict:
        """The model, weights, ATS setting, clip geometry and device the answers come from."""
        return self.predictor.describe()

    def predict(self, source, fps: Optional[float] = None, *, topk: int = 5, per_clip: bool = False,
                stride: Optional[float] = None):
        """Top-k labels for a video file, a list of video files, or frames in memory.

        Args:
            source: a path; a list or tuple of paths; or uint8 RGB frames shaped (T, H, W, 3), a numpy array
                or a torch tensor, with their `fps`.
            fps: the frame rate of `source` frames (required for frames, ignored for files, which say theirs).
            topk: how many labels each answer lists.
            per_clip: also answer for every clip of a sliding window (`per_clip` in the answer, with each
                window's times: the timestamps of the frames it used).
            stride: with `per_clip`, seconds between clip starts (default one clip length).

        Returns:
            For one path or frames: a dict with `topk` (label, index, score = probability), `coverage` (the
            seconds the clips covered), GFLOPs and kept tokens. For a list: one such dict per path, in order;
            a file that cannot be used gives `{"path", "error": {"reason", "detail"}}` instead of stopping
            the others.

        Raises:
            DecodeFailure: one path that cannot be used (missing, corrupt, truncated, ...), with its `reason`.
            VideoATSError: frames of the wrong shape or type, or frames without `fps`.
        """
        if topk < 1:
            raise VideoATSError(f"topk {topk}: give at least 1")
        if isinstance(source, (str, os.PathLike)):
            return predict_video(self.predictor, os.fspath(source), topk=topk, per_clip=per_clip, stride=stride)
        if isinstance(source, (list, tuple)):
            if source and not all(isinstance(p, (str, os.PathLike)) for p in source):
                raise VideoATSError("a list is of paths; give frames as one uint8 array or tensor (T, H, W, 3), "
                                    "e.g. predict(np.stack(frames), fps=30)")
            return [self._one_of_many(os.fspath(p), topk, per_clip, stride) for p in source]
        if isinstance(source, (np.ndarray, Tensor)):
            if fps is None or not math.isfinite(fps) or fps <= 0:
                raise VideoATSError(f"frames need their frame rate, a positive number: predict(frames, fps=30), "
                                    f"not fps={fps}")
            return predict_frames(self.predictor, source, float(fps), topk=topk, per_clip=per_clip, stride=stride)
        raise VideoATSError(f"cannot predict on a {type(source).__name__}: give a path, a list of paths, or "
                            "uint8 frames (T, H, W, 3) with fps")

    def stream(self, frames: Union[Iterable, str], fps: Optional[float] = None, *, stride: Optional[float] = None,
               topk: int = 5, callback: Optional[Callable[[dict], None]] = None) -> Iterator[dict]:
        """Answers for a sliding window over a stream of frames, each as soon as its window is complete.

        Args:
            frames: any iterable of uint8 RGB frames (H, W, 3) at a constant `fps` (a camera loop, a decoder),
                or a source PyAV reads as it comes: a URL (`rtsp://`, `http(s)://`), a camera (`/dev/video0`),
                `-` (standard input) or a file.
            fps: the frames' rate (a source states its own; given, it overrides it).
            stride: seconds between window starts (default one clip length: windows tile the stream).
            topk: labels per window.
            callback: called with each window's answer as it completes (as well as yielding it).

        Yields:
            dicts with `index`, `start_s`, `end_s`, `frame_indices` and `topk`. Only the resized frames of
            the windows still open are kept, so a stream of any length runs in bounded memory.
        """
        container = None
        if isinstance(frames, (str, os.PathLike)):
            container = open_stream(os.fspath(frames), float(self.predictor.cfg.DATA.DECODE_TIMEOUT))
            frames, stated = stream_frames(container)
            fps = fps or stated
        if not fps or not math.isfinite(fps) or fps <= 0:
            raise VideoATSError(f"frames need their frame rate, a positive number: stream(frames, fps=30), not "
                                f"fps={fps}")
        try:
            for window in stream_windows(self.predictor, frames, float(fps), stride=stride, topk=topk):
                if callback is not None:
                    callback(window)
                yield window
        finally:
            if container is not None:
                container.close()

    def _one_of_many(self, path: str, topk: int, per_clip: bool, stride: Optional[float]) -> dict:
        try:
            return predict_video(self.predictor, path, topk=topk, per_clip=per_clip, stride=stride)
        except DecodeFailure as e:
            return {"path": path, "error": {"reason": e.reason, "detail": e.detail}}
