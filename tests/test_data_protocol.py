"""Real encoded videos whose pixels carry their frame number / position: the dataset returns exactly
the frames and crops of the official TimeSformer / X-ViT test protocol."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videoats.data import ClipSettings, VideoClipDataset, VideoRecord, collate_views, read_frames

EXAMPLE = [0, 36, 72, 109, 145, 182, 218, 255]
THREE_CLIPS = [EXAMPLE, [14, 51, 87, 123, 160, 196, 233, 269], [29, 65, 102, 138, 175, 211, 247, 284]]


def make_dataset(path, split="test", **kw):
    settings = dict(num_frames=8, sampling_rate=32, test_crop_size=32, num_clips=1, num_crops=3,
                    decode_timeout=20.0)
    settings.update(kw)
    return VideoClipDataset([VideoRecord(path, 0, "a")], ["a"], split, ClipSettings(**settings))


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_one_clip_three_crops_has_the_protocol_frames(index_video_300, vt, decoder):
    ds = make_dataset(index_video_300, decoder=decoder)
    item = ds[0]
    assert item["failed"] is None and item["video"].shape == (3, 3, 8, 32, 32)
    frames = vt.decode_index(vt.to_pixels(item["video"]))  # (S, T)
    assert frames.tolist() == [EXAMPLE] * 3


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_three_clips(index_video_300, vt, decoder):
    ds = make_dataset(index_video_300, decoder=decoder, num_clips=3, num_crops=1)
    assert len(ds) == 3 and ds.views_per_video == 3
    batch = collate_views([ds[i] for i in range(3)])
    assert batch["clip_index"].tolist() == [0, 1, 2] and batch["crop_index"].tolist() == [0, 0, 0]
    assert vt.decode_index(vt.to_pixels(batch["video"])).tolist() == THREE_CLIPS


def test_fps_from_the_container_scales_the_span(tmp_path, vt):
    path = vt.index_video(tmp_path / "fps60.mp4", 300, fps=60)
    item = make_dataset(path, num_crops=1)[0]
    assert vt.decode_index(vt.to_pixels(item["video"]))[0].tolist() == [0, 73, 146, 219, 292, 299, 299, 299]


def test_centered_sampling(index_video_300, vt):
    item = make_dataset(index_video_300, num_crops=1, clip_sampling="centered")[0]
    assert vt.decode_index(vt.to_pixels(item["video"]))[0].tolist() == [22, 58, 94, 131, 167, 204, 240, 277]


@pytest.mark.parametrize("height,width,axis", [(32, 40, "x"), (40, 32, "y")])
def test_crops_are_left_centre_right_or_top_centre_bottom(tmp_path, vt, height, width, axis):
    path = vt.ramp_video(tmp_path / f"ramp{height}x{width}.mp4", 40, height, width)
    item = make_dataset(path, num_frames=2, sampling_rate=2)[0]  # short side 32 = crop: no resize
    pixels = vt.to_pixels(item["video"])  # (S, T, 32, 32, 3)
    x0 = np.round(pixels[:, 0, 0, 0, 0] / 5).astype(int).tolist()
    y0 = np.round(pixels[:, 0, 0, 0, 1] / 5).astype(int).tolist()
    along, across = (x0, y0) if axis == "x" else (y0, x0)
    assert along == [0, 4, 8]  # L - size = 8: 0, ceil(8 / 2), 8
    assert across == [0, 0, 0]
    assert item["crop_index"].tolist() == [0, 1, 2]


def test_resize_is_bilinear_without_antialias_then_cropped(tmp_path, vt):
    path = vt.ramp_video(tmp_path / "ramp.mp4", 40, 32, 40)
    ds = make_dataset(path, num_frames=2, sampling_rate=2, test_crop_size=16)
    item = ds[0]
    frames, _, _ = read_frames(path, lambda n, fps: np.array([0, 3]), timeout=10)  # linspace(0, 3, 2)
    x = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255
    x = (x - 0.45) / 0.225
    ref = F.interpolate(x, size=(16, 20), mode="bilinear", align_corners=False, antialias=False)
    for k, offset in enumerate([0, 2, 4]):  # 20 - 16 = 4: 0, ceil(2), 4
        assert torch.allclose(item["video"][k], ref[..., offset:offset + 16], atol=1e-5)


def test_val_is_one_centred_clip_and_centre_crop(index_video_300, vt):
    ds = make_dataset(index_video_300, split="val", train_jitter_scales=(32, 40), train_crop_size=32, num_clips=4)
    assert len(ds) == 1 and ds.views_per_video == 1
    item = ds[0]
    assert item["video"].shape == (1, 3, 8, 32, 32) and item["clip_index"] == 0
    assert vt.decode_index(vt.to_pixels(item["video"]))[0].tolist() == [22, 58, 94, 131, 167, 204, 240, 277]


def test_train_clip_is_a_strided_window(index_video_300, vt):
    ds = make_dataset(index_video_300, split="train", sampling_rate=4, train_jitter_scales=(32, 40),
                      train_crop_size=24, random_flip=True)
    for _ in range(5):
        item = ds[0]
        assert item["video"].shape == (3, 8, 24, 24) and item["video"].dtype == torch.float32
        idx = vt.decode_index(vt.to_pixels(item["video"].unsqueeze(0)))[0]
        steps = np.diff(idx)
        assert steps.min() >= 4 and steps.max() <= 5 and idx[-1] <= 299
