"""The 3-frame tubelet stem: what it computes (a Conv3d with temporal zero padding, derived here
independently), that it makes frame order visible, and that its cost is counted alike by fvcore and the
analytic GFLOPs count."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import videoats
from videoats.errors import VideoATSError
from videoats.flops import analytic_gflops, fvcore_count
from videoats.models.timesformer import TubeletEmbed

P, D = 4, 8


def _stem():
    torch.manual_seed(0)
    stem = TubeletEmbed(P, D)
    with torch.no_grad():
        stem.proj.bias.normal_()
    return stem.double()


def test_tubelet_equals_conv3d_with_temporal_zero_padding():
    stem = _stem()
    video = torch.randn(2, 3, 5, 8, 12, dtype=torch.float64)
    # the same weights as one (3, p, p) kernel: frame t-1, t, t+1
    ctx = stem.proj_context.weight
    kernel = torch.stack([ctx[:, :3], stem.proj.weight, ctx[:, 3:]], dim=2)  # (D, 3, 3, p, p)
    want = F.conv3d(video, kernel, stem.proj.bias, stride=(1, P, P), padding=(1, 0, 0))  # (B, D, T, h, w)
    got = stem.embed_video(video).reshape(2, 5, 2, 3, D).permute(0, 4, 1, 2, 3)
    assert torch.allclose(got, want, atol=1e-12)


def test_one_token_by_hand_at_both_ends_of_the_clip():
    stem = _stem()
    video = torch.randn(1, 3, 4, 8, 8, dtype=torch.float64)
    got = stem.embed_video(video).reshape(4, 2, 2, D)
    w, c = stem.proj.weight, stem.proj_context.weight
    for t, (y, x) in ((0, (1, 0)), (3, (0, 1))):
        patch = lambda f: video[0, :, f, y * P:(y + 1) * P, x * P:(x + 1) * P]  # noqa: E731
        want = (w * patch(t)).sum(dim=(1, 2, 3)) + stem.proj.bias
        if t > 0:  # the frame before; beyond the clip it is zero
            want = want + (c[:, :3] * patch(t - 1)).sum(dim=(1, 2, 3))
        if t < 3:
            want = want + (c[:, 3:] * patch(t + 1)).sum(dim=(1, 2, 3))
        assert torch.allclose(got[t, y, x], want, atol=1e-12)


def test_frame_order_reaches_the_tokens():
    """A frame stem gives reversed clips the reversed tokens; the tubelet stem does not (it sees motion)."""
    video = torch.randn(1, 3, 4, 8, 8)
    stem = _stem().float()
    frame_tokens = lambda v: stem.proj(v.transpose(1, 2).reshape(-1, 3, 8, 8))  # noqa: E731
    assert torch.allclose(frame_tokens(video.flip(2)), frame_tokens(video).flip(0))
    assert not torch.allclose(stem.embed_video(video.flip(2)), stem.embed_video(video).flip(0), atol=1e-3)


def test_benchmark_model_counts_agree_with_fvcore_and_by_hand():
    model = videoats.create_model("timesformer_tiny_8x64").eval()
    frame_stem = videoats.create_model("timesformer_tiny_8x64", stem="patch").eval()
    assert model.patch_embed.macs_per_patch() == 9 * 8 * 8 * 64
    T, L = 8, 64
    extra = T * L * (6 * 8 * 8) * 64 / 1e9  # the two neighbour frames, one MAC per weight per token
    assert analytic_gflops(model) - analytic_gflops(frame_stem) == pytest.approx(extra, rel=1e-9)
    x = torch.randn(1, 3, 8, 64, 64)
    assert analytic_gflops(model) == pytest.approx(fvcore_count(model, x).gflops, rel=5e-3)


def test_unknown_stem_is_one_line():
    with pytest.raises(VideoATSError, match="unknown stem 'conv'; choose one of patch, tubelet"):
        videoats.create_model("timesformer_tiny_8x64", stem="conv")
