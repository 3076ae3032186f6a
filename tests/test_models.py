"""Backbones: published sizes, and the same function as the originals' own token layouts."""
import pytest
import torch

import videoats
from videoats.errors import VideoATSError

from reference_models import original_timesformer, original_xvit


def randomize(model, std=0.1, seed=0):
    """Non-zero everything (temporal_fc starts at zero, which would hide temporal-attention mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def clip(t=8, size=32, batch=2, seed=0):
    return torch.randn(batch, 3, t, size, size, generator=torch.Generator().manual_seed(seed))


def test_published_parameter_counts():
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        base = videoats.create_model("timesformer_8x224", num_classes=600)
        hr = videoats.create_model("timesformer_hr_16x448")
        large = videoats.create_model("timesformer_l_96x224")
        deit = videoats.create_model("deit_small_patch16_224")
    assert sum(p.numel() for p in base.parameters()) == 121_720_152
    assert hr.pos_embed.shape == (1, 785, 768) and hr.time_embed.shape == (1, 16, 768)
    assert large.time_embed.shape == (1, 96, 768)
    assert sum(p.numel() for p in deit.parameters()) == 22_050_664


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time", "space_only"])
@pytest.mark.parametrize("frames,size", [(8, 32), (4, 48)])  # 4 frames / 48 px: time and position resizing
def test_timesformer_equals_the_original_layout(attention_type, frames, size):
    model = randomize(videoats.create_model("timesformer_tiny_8x32", attention_type=attention_type))
    x = clip(frames, size)
    with torch.no_grad():
        ours = model(x)
    assert (ours - original_timesformer(model, x)).abs().max() < 1e-4


@pytest.mark.parametrize("frames,size", [(8, 32), (16, 32), (8, 48)])  # 16 frames = two shift segments
def test_xvit_equals_the_original_layout(frames, size):
    model = randomize(videoats.create_model("xvit_tiny_8x32", num_frames=frames))
    x = clip(frames, size)
    with torch.no_grad():
        ours = model(x)
    assert (ours - original_xvit(model, x)).abs().max() < 1e-4


def test_frame_shift_moves_the_documented_channels():
    from videoats.models.xvit import shift_frames

    x = torch.arange(1, 17, dtype=torch.float32).reshape(1, 16, 1, 1).expand(1, 16, 1, 8).clone()
    out = shift_frames(x, segments=8, fold=2)[0, :, 0]  # (frames, channels)
    assert out[0, :2].tolist() == [2, 2] and out[7, :2].tolist() == [0, 0]  # from t+1; zero at segment end
    assert out[8, :2].tolist() == [10, 10]  # second segment starts over
    assert out[0, 2:4].tolist() == [0, 0] and out[1, 2:4].tolist() == [1, 1]  # from t-1
    assert out[8, 2:4].tolist() == [0, 0]  # no mixing across segments
    assert torch.equal(out[:, 4:], x[0, :, 0, 4:])  # the rest unchanged
    # with ATS, a neighbour that dropped the location hands a zero: test_video_ats_reference checks it


def test_embedding_resizes_by_nearest_neighbour():
    model = randomize(videoats.create_model("timesformer_tiny_8x32"))
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        cls, x = model.embed(torch.zeros(1, 3, 16, 48, 48))  # 16 frames, 6 x 6 patches on a 4 x 4 grid
    pos = model.pos_embed[0, 1:].reshape(4, 4, -1)
    for t in (0, 1, 5, 15):
        for r, c in ((0, 0), (1, 2), (5, 5), (3, 4)):
            expected = model.time_embed[0, t // 2] + pos[r * 4 // 6, c * 4 // 6]
            assert torch.allclose(x[0, t, r * 6 + c], expected)
    assert torch.allclose(cls[0, 0], model.cls_token[0, 0] + model.pos_embed[0, 0])


def test_models_refuse_wrong_inputs_and_names():
    with pytest.raises(VideoATSError, match="unknown model"):
        videoats.create_model("timesformer_9x9")
    with pytest.raises(VideoATSError, match=r"\(B, 3, T, H, W\)"):
        videoats.create_model("timesformer_tiny_8x32")(torch.zeros(1, 8, 3, 32, 32))
    with pytest.raises(VideoATSError, match="divisible"):
        videoats.create_model("xvit_tiny_8x32")(torch.zeros(1, 3, 12, 32, 32))
    assert "timesformer_8x224" in videoats.list_models() and videoats.list_models("xvit*")
