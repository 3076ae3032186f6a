"""Which frames and which pixels a clip is made of.

The test-time functions reproduce the TimeSformer / X-ViT protocol frame-exactly (same float32 linspace,
same truncation, same crop offsets), because published accuracies are only comparable under it. They are
written against frame counts, not seconds: pytorchvideo's clip samplers work in seconds with Fractions and
decode a time window, which cannot reproduce the frame indices of the protocol, so they are not used here.
"""
from __future__ import annotations

import math
import random
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

CLIP_SAMPLINGS = ("official", "centered")


def clip_span(num_frames: int, sampling_rate: int, fps: float, target_fps: float) -> float:
    """Frames of the source video one clip covers; the stride is defined at `target_fps`."""
    if not fps or not math.isfinite(fps) or fps <= 0:
        fps = target_fps
    return num_frames * sampling_rate * fps / target_fps


def clip_start(video_len: int, span: float, clip_index: int, num_clips: int, mode: str = "official") -> float:
    """Start frame (a float, as in the protocol) of clip `clip_index` of `num_clips`.

    official: clip k starts at max(len - span, 0) * k / n, so a single clip starts at frame 0.
    centered: clip k is centred in the k-th of n equal segments (a single clip is centred in the video),
    then shifted inside the video.
    """
    delta = max(video_len - span, 0)
    if mode == "official":
        return delta * clip_index / num_clips
    if mode == "centered":
        centre = video_len * (clip_index + 0.5) / num_clips
        return min(max(centre - span / 2.0, 0.0), delta)
    raise ValueError(f"unknown clip sampling {mode!r}; use one of {', '.join(CLIP_SAMPLINGS)}")


def frame_indices(start: float, span: float, num_frames: int, video_len: int) -> np.ndarray:
    """`linspace(start, start + span - 1, num_frames)` clamped to the video, truncated to int64.

    float32 torch.linspace on purpose: that is what the reference code computes, and a float64 linspace
    truncates differently on a few boundary values.
    """
    index = torch.linspace(start, start + span - 1, num_frames)
    index = torch.clamp(index, 0, max(video_len - 1, 0)).long()
    return index.numpy()


def protocol_clip_indices(video_len: int, num_frames: int, sampling_rate: int, fps: float, target_fps: float,
                      clip_index: int, num_clips: int, mode: str = "official") -> np.ndarray:
    span = clip_span(num_frames, sampling_rate, fps, target_fps)
    start = clip_start(video_len, span, clip_index, num_clips, mode)
    return frame_indices(start, span, num_frames, video_len)


def random_clip_indices(video_len: int, num_frames: int, sampling_rate: int, fps: float, target_fps: float,
                        rng: Optional[random.Random] = None) -> np.ndarray:
    """A training clip: the same geometry as a test clip, at a uniformly random start."""
    rng = rng or random
    span = clip_span(num_frames, sampling_rate, fps, target_fps)
    start = rng.uniform(0, max(video_len - span, 0))
    return frame_indices(start, span, num_frames, video_len)


# ---------------------------------------------------------------------------------------------- spatial


def short_side_size(height: int, width: int, size: int):
    """(new_h, new_w) with the short side at `size` and the long side floor(long / short * size)."""
    if width <= height:
        return int(math.floor(height / width * size)), size
    return size, int(math.floor(width / height * size))


def resize_short_side(video: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, align_corners=False, no antialias, skipped when already at size: the protocol's resize.

    `video` is float (..., H, W); leading dims are flattened for one interpolate call.
    """
    height, width = video.shape[-2:]
    if min(height, width) == size:
        return video
    new_h, new_w = short_side_size(height, width, size)
    lead = video.shape[:-2]
    flat = video.reshape(-1, 1, height, width) if video.dim() != 4 else video
    out = F.interpolate(flat, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
    return out.reshape(*lead, new_h, new_w)


def crop_offsets(height: int, width: int, size: int, crop_index: int, num_crops: int):
    """(y, x) of a `size` crop: along the long side at start / centre / end, centred on the short side.

    For 3 crops this is the reference `uniform_crop` (centre offset ceil((L - size) / 2)); 1 crop is the
    centre; n crops are spread evenly along the long side.
    """
    y = int(math.ceil((height - size) / 2))
    x = int(math.ceil((width - size) / 2))
    if num_crops > 1:
        along = int(math.ceil((max(height, width) - size) * crop_index / (num_crops - 1)))
        if height > width:
            y = along
        else:
            x = along
    return y, x


def spatial_crops(video: torch.Tensor, size: int, num_crops: int) -> torch.Tensor:
    """(..., H, W) -> (num_crops, ..., size, size), from one resized copy shared by all crops."""
    video = resize_short_side(video, size)
    height, width = video.shape[-2:]
    crops = []
    for k in range(num_crops):
        y, x = crop_offsets(height, width, size, k, num_crops)
        crops.append(video[..., y:y + size, x:x + size])
    return torch.stack(crops)


def normalize(video: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel_dim: int) -> torch.Tensor:
    """uint8 or [0, 1] float -> (x / 255 - mean) / std, float32."""
    if video.dtype == torch.uint8:
        video = video.float().div_(255.0)
    shape = [1] * video.dim()
    shape[channel_dim] = 3
    mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32).view(shape)
    return (video - mean_t) / std_t


def train_transform(jitter_scales: Sequence[int], crop_size: int, flip: bool):
    """Random short side in [lo, hi], random crop, optional flip, on uint8 (T, C, H, W) video tensors."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    lo, hi = int(jitter_scales[0]), int(jitter_scales[-1])
    steps: List = [v2.RandomShortestSize(min_size=list(range(lo, hi + 1)), antialias=True),
                   v2.RandomCrop(crop_size, pad_if_needed=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    pipeline = v2.Compose(steps)

    def apply(frames_tchw: torch.Tensor) -> torch.Tensor:
        return pipeline(tv_tensors.Video(frames_tchw)).as_subclass(torch.Tensor)

    return apply
