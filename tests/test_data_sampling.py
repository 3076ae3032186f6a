"""The protocol arithmetic, checked against hand-computed values (no video needed)."""
import numpy as np
import pytest
import torch

from videoats.data import sampling


def test_single_clip_starts_at_frame_zero():
    # span 8 * 32 * 30 / 30 = 256 frames; linspace(0, 255, 8) truncated
    got = sampling.protocol_clip_indices(300, 8, 32, 30.0, 30, clip_index=0, num_clips=1)
    assert got.tolist() == [0, 36, 72, 109, 145, 182, 218, 255]


def test_three_clips_start_at_k_thirds_of_the_slack():
    # slack 300 - 256 = 44: starts 0, 14.67, 29.33; step 255 / 7 = 36.43
    expected = [[0, 36, 72, 109, 145, 182, 218, 255],
                [14, 51, 87, 123, 160, 196, 233, 269],
                [29, 65, 102, 138, 175, 211, 247, 284]]
    got = [sampling.protocol_clip_indices(300, 8, 32, 30.0, 30, k, 3).tolist() for k in range(3)]
    assert got == expected


def test_stride_scales_with_fps_and_short_videos_clamp():
    # 60 fps: span 512 > 300 frames, so start 0 and indices clamp at the last frame
    got = sampling.protocol_clip_indices(300, 8, 32, 60.0, 30, 0, 1)
    assert got.tolist() == [0, 73, 146, 219, 292, 299, 299, 299]
    assert sampling.protocol_clip_indices(100, 8, 32, 30.0, 30, 0, 1).tolist() == [0, 36, 72, 99, 99, 99, 99, 99]


def test_unknown_fps_falls_back_to_target_fps():
    assert sampling.clip_span(8, 32, 0.0, 30) == 256
    assert sampling.clip_span(8, 32, float("nan"), 30) == 256


def test_centered_clip_sits_in_the_middle():
    got = sampling.protocol_clip_indices(300, 8, 32, 30.0, 30, 0, 1, mode="centered")
    assert got.tolist() == [22, 58, 94, 131, 167, 204, 240, 277]
    # 2 clips: centres 75 and 225, shifted into the video
    starts = [sampling.clip_start(300, 256, k, 2, "centered") for k in range(2)]
    assert starts == [0.0, 44.0]


def test_random_clip_is_inside_the_video():
    rng = __import__("random").Random(0)
    for _ in range(50):
        idx = sampling.random_clip_indices(300, 8, 4, 30.0, 30, rng)
        assert len(idx) == 8 and idx.min() >= 0 and idx.max() <= 299
        assert np.all(np.diff(idx) >= 4) and idx[-1] - idx[0] <= 31


def test_resize_and_crop_geometry_of_the_protocol():
    assert sampling.short_side_size(256, 340, 224) == (224, 297)  # floor(340 / 256 * 224) = 297
    assert sampling.short_side_size(340, 256, 224) == (297, 224)
    # landscape: crops along x at 0, ceil(58.5)=59... here L - size = 73, centre ceil(36.5) = 37
    assert [sampling.crop_offsets(224, 297, 224, k, 3) for k in range(3)] == [(0, 0), (0, 37), (0, 73)]
    assert [sampling.crop_offsets(297, 224, 224, k, 3) for k in range(3)] == [(0, 0), (37, 0), (73, 0)]
    assert sampling.crop_offsets(224, 297, 224, 0, 1) == (0, 37)  # one crop: the centre


def test_spatial_crops_reuse_one_resize():
    video = torch.arange(2 * 3 * 40 * 50, dtype=torch.float32).reshape(3, 2, 40, 50)
    crops = sampling.spatial_crops(video, 40, 3)  # no resize: short side already 40
    assert crops.shape == (3, 3, 2, 40, 40)
    assert torch.equal(crops[0], video[..., 0:40]) and torch.equal(crops[1], video[..., 5:45])
    assert torch.equal(crops[2], video[..., 10:50])


def test_normalize_matches_the_formula():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 2, 1, 1).expand(3, 2, 1, 1)
    out = sampling.normalize(x, (0.45,) * 3, (0.225,) * 3, channel_dim=0)
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, 0], torch.full((3, 1, 1), -2.0)) and torch.allclose(out[:, 1], torch.full((3, 1, 1), 0.55 / 0.225))


def test_unknown_clip_sampling_is_refused():
    with pytest.raises(ValueError):
        sampling.clip_start(300, 256, 0, 1, "middle")
