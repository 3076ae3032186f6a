"""Test views of one video file: where its clips start (`protocol_plan` as `eval` places them, or a sliding
window), reading their frames in bounded pieces, and turning frames into normalised crops. `infer`,
`visualize` and `flops --input` use these, so a file gets the views here that `eval` would give it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import VideoATSError
from .decoding import DecodeFailure, read_frames, refuse_truncated
from .files import classify_failure
from .sampling import clip_span, clip_start, frame_indices, normalize, spatial_crops

MAX_FRAMES_PER_READ = 256  # decode long per-clip runs in pieces, so memory does not grow with the video
MAX_WINDOWS = 100_000


def parse_views(text: str) -> Tuple[int, int]:
    """'1x3' -> (clips, crops)."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        clips, crops = (int(p) for p in parts)
    except ValueError:
        raise VideoATSError(f"views {text!r}: write CLIPSxCROPS, e.g. 1x3")
    if clips < 1 or crops < 1:
        raise VideoATSError(f"views {text!r}: clips and crops must be at least 1")
    return clips, crops


def effective_fps(fps: float, target_fps: float) -> float:
    return fps if fps and math.isfinite(fps) and fps > 0 else float(target_fps)


@dataclass
class ClipPlan:
    """Where each clip of a video starts and which frames it takes (decided once the length is known)."""

    num_frames: int
    fps: float
    span: float
    starts: List[float]
    indices: np.ndarray  # (clips, T) int64


def protocol_plan(settings, num_frames: int, fps: float) -> ClipPlan:
    """The test views' clips: `num_clips` placed as TEST.CLIP_SAMPLING says (what `eval` decodes)."""
    s = settings
    span = clip_span(s.num_frames, s.sampling_rate, fps, s.target_fps)
    starts = [clip_start(num_frames, span, k, s.num_clips, s.clip_sampling) for k in range(s.num_clips)]
    idx = np.stack([frame_indices(st, span, s.num_frames, num_frames) for st in starts])
    return ClipPlan(num_frames, fps, span, starts, idx)


def sliding_plan(settings, num_frames: int, fps: float, stride_s: Optional[float] = None) -> ClipPlan:
    """Clips every `stride_s` seconds (default: one clip length, so they tile the video), plus one clip
    ending at the last frame when the stride leaves the end uncovered."""
    s = settings
    span = clip_span(s.num_frames, s.sampling_rate, fps, s.target_fps)
    step = span if not stride_s else float(stride_s) * effective_fps(fps, s.target_fps)
    if step <= 0:
        raise VideoATSError(f"--stride {stride_s}: give a positive number of seconds")
    last = num_frames - span
    starts = [0.0]
    if last > 0:
        count = int(math.floor(last / step + 1e-9)) + 1
        if count > MAX_WINDOWS:
            raise VideoATSError(f"--stride {stride_s} s gives {count} clips; use a longer stride")
        starts = [k * step for k in range(count)]
        if starts[-1] < last - 1e-6:
            starts.append(float(last))
    idx = np.stack([frame_indices(st, span, s.num_frames, num_frames) for st in starts])
    return ClipPlan(num_frames, fps, span, starts, idx)


def read_clip_frames(path: str, settings, planner: Callable[[int, float], ClipPlan]):
    """Yield (first clip index, frames uint8 (n, T, H, W, 3)) for the clips `planner` lays out, reading
    at most MAX_FRAMES_PER_READ frames at a time; the plan is available as the first item (None, plan).

    Raises DecodeFailure (reasons in REASONS) before anything is yielded when the video is unusable.
    """
    s = settings
    box: Dict[str, ClipPlan] = {}
    per_read = max(1, MAX_FRAMES_PER_READ // max(1, s.num_frames))

    def read(first: int):
        def pick(video_len: int, fps: float) -> np.ndarray:
            if "plan" not in box:
                box["plan"] = planner(int(video_len), float(fps))
            return box["plan"].indices[first:first + per_read].reshape(-1)

        frames, _, meta = read_frames(path, pick, backend=s.decoder, short_side=s.decode_short_side,
                                      timeout=s.decode_timeout, num_threads=s.decode_threads)
        return frames, refuse_truncated(meta)

    try:
        frames, meta = read(0)
    except DecodeFailure as e:
        raise classify_failure(path, e, min(float(s.decode_timeout or 10.0), 10.0)) from None
    plan = box["plan"]
    plan.fps = float(meta.fps or 0.0)
    yield None, plan
    n_clips = len(plan.starts)
    first = 0
    while True:
        count = min(per_read, n_clips - first)
        yield first, frames.reshape(count, s.num_frames, *frames.shape[1:])
        first += count
        if first >= n_clips:
            return
        frames, _ = read(first)


def make_views(frames: np.ndarray, settings, num_crops: int) -> Tensor:
    """uint8 (n, T, H, W, 3) clips -> normalised views (n * num_crops, 3, T, S, S), clip-major, in the
    protocol's order (normalise, resize the short side, crop) as the test dataset does it."""
    s = settings
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 4, 1, 2, 3)  # (n, 3, T, H, W)
    video = normalize(video, s.mean, s.std, channel_dim=1)
    crops = spatial_crops(video, s.test_crop_size, num_crops)  # (S, n, 3, T, s, s)
    return crops.transpose(0, 1).reshape(-1, *crops.shape[2:]).contiguous()


def view_pixels(view: Tensor, settings) -> np.ndarray:
    """A normalised view (3, T, S, S) back to uint8 frames (T, S, S, 3): the pixels the model saw."""
    mean = torch.tensor(settings.mean, dtype=torch.float32).view(3, 1, 1, 1)
    std = torch.tensor(settings.std, dtype=torch.float32).view(3, 1, 1, 1)
    x = (view.detach().float().cpu() * std + mean) * 255.0
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()
