"""Test views of one video file: where its clips start (`protocol_plan` as `eval` places them, or a sliding
window), reading their frames in bounded pieces, and turning frames into normalised crops. `infer`,
`visualize` and `flops --input` use these, so a file gets the views here that `eval` would give it.

Memory is bounded by the model's input, not the source: `protocol_frame` normalises and resizes each frame
as soon as it is decoded (the protocol's own resize, so the numbers are those of resizing the whole clip),
and only that small float copy is kept. A 4K frame exists at full size one at a time.

Time: clip positions are laid out in frames of the average rate, as the protocol does. On a variable
frame rate video (phones record them) those positions are read as times and each takes the frame shown at
that time (`sample_by_time`), so clips are even in time; window times are always the presentation times of
the frames a clip used.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import VideoATSError
from .decoding import DecodeFailure, FrameTransform, read_frames, refuse_truncated, scan_file
from .files import classify_failure
from .sampling import clip_span, clip_start, frame_indices, normalize, resize_short_side, spatial_crops

MAX_FRAMES_PER_READ = 256  # decode long per-clip runs in pieces, so memory does not grow with the video
MAX_WINDOWS = 100_000
VARIABLE_RATE = 0.25  # frame intervals spread by more than this share of the median: a variable frame rate


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
    frame_times: Optional[np.ndarray] = None  # presentation time of every frame (s), when the container says
    by_time: bool = False  # the video has a variable frame rate and `indices` were chosen by time

    def time_of(self, frame: int) -> float:
        """When frame `frame` is shown (s from the first frame)."""
        if self.frame_times is not None:
            return float(self.frame_times[frame])
        return frame / effective_fps(self.fps, 30.0)

    def window(self, clip: int) -> Tuple[float, float]:
        """(start, end) s of clip `clip`: from its first frame's time to when its last frame stops showing."""
        first, last = int(self.indices[clip].min()), int(self.indices[clip].max())
        if last + 1 < self.num_frames:
            end = self.time_of(last + 1)
        else:
            end = self.time_of(last) + (1.0 / self.fps if self.fps > 0 else 0.0)
        return self.time_of(first), end

    def duration(self) -> float:
        return self.time_of(self.num_frames - 1) + (1.0 / self.fps if self.fps > 0 else 0.0)


def protocol_plan(settings, num_frames: int, fps: float) -> ClipPlan:
    """The test views' clips: `num_clips` placed as TEST.CLIP_SAMPLING says (what `eval` decodes)."""
    s = settings
    span = clip_span(s.num_frames, s.sampling_rate, fps, s.target_fps)
    starts = [clip_start(num_frames, span, k, s.num_clips, s.clip_sampling) for k in range(s.num_clips)]
    idx = np.stack([frame_indices(st, span, s.num_frames, num_frames) for st in starts])
    return ClipPlan(num_frames, fps, span, starts, idx)


def cover_plan(settings, num_frames: int, fps: float, max_clips: int) -> ClipPlan:
    """Enough clips to cover the whole video (at most `max_clips`), each centred in its equal share of it.

    With n = ceil(length / clip span) clips every share is at most one clip long, so the centred clips leave
    no gap; a video longer than `max_clips` clips is sampled evenly and the answer says what was covered."""
    s = settings
    span = clip_span(s.num_frames, s.sampling_rate, fps, s.target_fps)
    count = int(min(max(1, math.ceil(num_frames / span - 1e-9)), max(1, max_clips)))
    starts = [clip_start(num_frames, span, k, count, "centered") for k in range(count)]
    idx = np.stack([frame_indices(st, span, s.num_frames, num_frames) for st in starts])
    return ClipPlan(num_frames, fps, span, starts, idx)


def covered_seconds(windows: List[Tuple[float, float]]) -> float:
    """Length of the union of (start, end) windows."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(windows):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def sliding_plan(settings, num_frames: int, fps: float, stride_s: Optional[float] = None) -> ClipPlan:
    """Clips every `stride_s` seconds (default: one clip length, so they tile the video), plus one clip
    ending at the last frame when the stride leaves the end uncovered."""
    s = settings
    span = clip_span(s.num_frames, s.sampling_rate, fps, s.target_fps)
    if stride_s is not None and not (math.isfinite(stride_s) and stride_s > 0):
        raise VideoATSError(f"--stride {stride_s}: give a positive number of seconds")
    step = span if not stride_s else float(stride_s) * effective_fps(fps, s.target_fps)
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


def is_variable_rate(frame_times: Optional[np.ndarray]) -> bool:
    """True when the frame intervals differ by more than VARIABLE_RATE of their median."""
    if frame_times is None or len(frame_times) < 3:
        return False
    gaps = np.diff(frame_times)
    median = float(np.median(gaps))
    return median > 0 and float(gaps.max() - gaps.min()) > VARIABLE_RATE * median


def sample_by_time(plan: ClipPlan, frame_times: np.ndarray, target_fps: float) -> ClipPlan:
    """`plan` with its positions read as times at the average rate, each taking the frame shown then.

    A constant-rate video keeps the protocol's frame indices untouched (only a variable rate needs this)."""
    plan.frame_times = frame_times
    if not is_variable_rate(frame_times):
        return plan
    rate = effective_fps(plan.fps, target_fps)
    clip_len = plan.indices.shape[1]
    rows = []
    for start in plan.starts:
        positions = torch.linspace(start, start + plan.span - 1, clip_len).double().numpy()
        shown = np.searchsorted(frame_times, positions / rate + 1e-9, side="right") - 1
        rows.append(np.clip(shown, 0, plan.num_frames - 1))
    plan.indices = np.stack(rows).astype(np.int64)
    plan.by_time = True
    return plan


def protocol_frame(settings) -> FrameTransform:
    """Decoded uint8 (H, W, 3) frame -> normalised float32 (3, h, w) with the short side at the crop size.

    The protocol's normalise and short-side resize, done per frame as it is decoded: bilinear interpolation
    treats every channel plane on its own, so this gives the numbers resizing the whole clip at once gives,
    without ever holding the clip at full size in float32 (`crop_views` then cuts the crops)."""
    s = settings
    mean = torch.tensor(s.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(s.std, dtype=torch.float32).view(3, 1, 1)
    # One float32 frame buffer per thread, reused: a fresh full-size temporary per frame makes glibc's malloc
    # raise its mmap threshold and keep the freed blocks (measured: +1.9 GB RSS over 152 1080p frames).
    # Per thread, because a decoder abandoned after a timeout may still be converting frames.
    local = threading.local()

    def transform(frame: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
        plane = getattr(local, "plane", None)
        if plane is None or plane.shape != image.shape:
            plane = local.plane = torch.empty(image.shape, dtype=torch.float32)
        plane.copy_(image).div_(255.0).sub_(mean).div_(std)  # `normalize`'s arithmetic, in place
        resized = resize_short_side(plane, s.test_crop_size)
        return (resized.clone() if resized is plane else resized).numpy()

    return transform


def read_clip_frames(path: str, settings, planner: Callable[[int, float], ClipPlan],
                     transform: Optional[FrameTransform] = None):
    """Yield (first clip index, frames (n, T, ...)) for the clips `planner` lays out, reading at most
    MAX_FRAMES_PER_READ frames at a time; the plan is available as the first item (None, plan).

    Frames are uint8 (n, T, H, W, 3), or what `transform` makes of each decoded frame (`protocol_frame`:
    float32 (n, T, 3, h, w) at the model's size). On a variable-frame-rate video the planner's positions
    are taken as times (`sample_by_time`). Raises DecodeFailure (reasons in REASONS) before anything is
    yielded when the video is unusable, truncated included.
    """
    s = settings
    box: Dict[str, ClipPlan] = {}
    per_read = max(1, MAX_FRAMES_PER_READ // max(1, s.num_frames))
    try:
        scan = scan_file(path, s.decode_timeout)
    except DecodeFailure as e:
        raise classify_failure(path, e, min(float(s.decode_timeout or 10.0), 10.0)) from None

    def read(first: int):
        def pick(video_len: int, fps: float) -> np.ndarray:
            if "plan" not in box:
                plan = planner(int(video_len), float(fps))
                if scan is not None and len(scan.frame_times) == video_len:
                    plan = sample_by_time(plan, scan.frame_times, s.target_fps)
                box["plan"] = plan
            return box["plan"].indices[first:first + per_read].reshape(-1)

        frames, _, meta = read_frames(path, pick, backend=s.decoder, short_side=s.decode_short_side,
                                      timeout=s.decode_timeout, num_threads=s.decode_threads,
                                      transform=transform, scan=scan)
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


def crop_views(frames: np.ndarray, settings, num_crops: int) -> Tensor:
    """`protocol_frame` output (n, T, 3, h, w) -> views (n * num_crops, 3, T, S, S), clip-major."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).transpose(1, 2)  # (n, 3, T, h, w)
    crops = spatial_crops(video, settings.test_crop_size, num_crops)  # (S, n, 3, T, s, s); no resize left
    return crops.transpose(0, 1).reshape(-1, *crops.shape[2:]).contiguous()


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
