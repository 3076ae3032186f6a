"""Dataset behaviour: distributed coverage, bad videos (reported at test time, replaced in training),
decode timeouts, and the odd files Kinetics copies contain."""
import logging
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from videoats.data import ClipSettings, protocol_clip_indices, VideoClipDataset, VideoRecord, build_loader, collate_views, decoding

SMALL = dict(num_frames=4, sampling_rate=2, test_crop_size=32, train_crop_size=32, train_jitter_scales=(32, 36),
             decode_timeout=20.0)


def dataset(paths, split="test", **kw):
    settings = dict(SMALL)
    settings.update(kw)
    records = [VideoRecord(str(p), i % 2, "ab"[i % 2]) for i, p in enumerate(paths)]
    return VideoClipDataset(records, ["a", "b"], split, ClipSettings(**settings))


@pytest.fixture(scope="module")
def five_videos(tmp_path_factory, vt):
    folder = tmp_path_factory.mktemp("five")
    return [vt.index_video(folder / f"v{i}.mp4", 20 + 4 * i) for i in range(5)]


@pytest.mark.parametrize("num_clips,shuffle", [(3, True), (1, False)])
def test_two_ranks_cover_every_view(five_videos, num_clips, shuffle):
    ds = dataset(five_videos, num_clips=num_clips, num_crops=3)
    assert len(ds) == 5 * num_clips and ds.views_per_video == 3 * num_clips
    seen, total = set(), 0
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=shuffle, seed=1)
        for batch in DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collate_views):
            assert batch["failed"] == [] and batch["video"].shape[1:] == (3, 4, 32, 32)
            keys = zip(batch["video_index"].tolist(), batch["clip_index"].tolist(), batch["crop_index"].tolist())
            seen.update(keys)
            total += batch["video"].shape[0]
    expected = {(v, c, s) for v in range(5) for c in range(num_clips) for s in range(3)}
    assert seen == expected
    # DistributedSampler pads to equal shares by repeating items: 5 * clips items -> ceil(/2) * 2
    assert total == 3 * 2 * ((5 * num_clips + 1) // 2)


def test_bad_videos_are_reported_never_replaced_at_test_time(bad_videos, caplog):
    names = ["good", "missing", "garbage", "truncated", "truncated_faststart", "empty", "zero_frames"]
    ds = dataset([bad_videos[n] for n in names], num_crops=3, sampling_rate=10)  # a clip spans all 40 frames
    with caplog.at_level(logging.WARNING, logger="videoats.data"):
        batch = collate_views([ds[i] for i in range(len(ds))])
    assert batch["video_index"].tolist() == [0, 0, 0]  # only the good video gives views
    reasons = {f["video_index"]: f["reason"] for f in batch["failed"]}
    assert reasons == {1: "missing", 2: "corrupt", 3: "corrupt", 4: "corrupt", 5: "zero_frames", 6: "zero_frames"}
    assert all(f["path"] == ds.videos[f["video_index"]].path for f in batch["failed"])
    assert "truncated" in [f for f in batch["failed"] if f["video_index"] == 4][0]["detail"]
    assert "not evaluated" in caplog.text


def test_bad_videos_through_a_worker_process(bad_videos):
    ds = dataset([bad_videos["garbage"], bad_videos["good"], bad_videos["missing"]], num_crops=1)
    batches = list(build_loader(ds, batch_size=2, num_workers=1))
    failed = [f for b in batches for f in b["failed"]]
    assert sorted(f["reason"] for f in failed) == ["corrupt", "missing"]
    assert sum(b["video"].shape[0] for b in batches) == 1


def test_training_replaces_bad_videos_deterministically(bad_videos, caplog):
    names = ["missing", "garbage", "truncated", "good", "empty", "zero_frames"]
    ds = dataset([bad_videos[n] for n in names], split="train")
    with caplog.at_level(logging.WARNING, logger="videoats.data"):
        items = [ds[i] for i in range(len(ds))]
    assert all(it["video"].shape == (3, 4, 32, 32) for it in items)
    assert [it["video_index"] for it in items] == [3] * 6  # the one good video stands in
    assert "using video" in caplog.text
    again = dataset([bad_videos[n] for n in names], split="train")
    assert [again.replacement_index(i, a) for i in range(6) for a in range(5)] == \
           [ds.replacement_index(i, a) for i in range(6) for a in range(5)]
    assert all(ds.replacement_index(i, a) != i for i in range(6) for a in range(10))


def test_a_truncated_file_still_trains(bad_videos):
    ds = dataset([bad_videos["truncated_faststart"]], split="train")
    assert ds[0]["video"].shape == (3, 4, 32, 32)


class Stuck:
    """A reader that never returns on its own: it waits until the test releases it (or, if the timeout
    never fires, gives up after a while and fails loudly, so a broken timeout fails the test, not hangs it)."""

    def __init__(self):
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, *args):
        self.entered.set()
        if not self.release.wait(20):
            raise AssertionError("a stuck reader was waited for: the decode timeout did not fire")
        raise AssertionError("a stuck reader's result was used after the item was returned")

    def still_stuck(self) -> bool:
        return self.entered.is_set() and not self.release.is_set()


@pytest.fixture
def stuck():
    reader = Stuck()
    yield reader
    reader.release.set()  # let the abandoned thread end


def test_a_stuck_decoder_times_out_and_falls_back(monkeypatch, index_video_300, vt, stuck):
    monkeypatch.setitem(decoding._READERS, "decord", stuck)
    ds = dataset([index_video_300], num_crops=1, decode_timeout=0.3)
    item = ds[0]
    assert stuck.still_stuck()  # the item came back while decord was still stuck: it was abandoned
    assert item["failed"] is None  # PyAV took over
    assert vt.decode_index(vt.to_pixels(item["video"]))[0].tolist() == [0, 2, 4, 7]  # linspace(0, 7, 4)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_stuck_video_is_reported_as_timeout(monkeypatch, index_video_300, num_workers, stuck):
    """Both readers stuck (in a DataLoader worker too): the item is a timeout, reported while they hang."""
    monkeypatch.setitem(decoding._READERS, "decord", stuck)
    monkeypatch.setitem(decoding._READERS, "pyav", stuck)
    ds = dataset([index_video_300], num_crops=1, decode_timeout=0.2)
    batch = next(iter(build_loader(ds, batch_size=1, num_workers=num_workers)))
    assert [f["reason"] for f in batch["failed"]] == ["timeout"]
    if num_workers == 0:  # in a worker process the readers hang there, out of this process' sight
        assert stuck.still_stuck()


def test_odd_videos_decode_to_rgb(tmp_path, vt):
    import av

    frames = [vt.index_frame(i, 30, 50) for i in range(24)]
    odd = vt.encode_video(tmp_path / "odd.mp4", frames)  # 30x50
    decord_bug = vt.index_video(tmp_path / "w48.mp4", 24, height=32, width=48)  # decord get_batch fails here
    vfr = vt.encode_video(tmp_path / "vfr.mp4", [vt.index_frame(i, 32, 40) for i in range(24)],
                          pts_ms=np.cumsum([0] + [33, 20, 50, 70] * 6)[:24])
    short = vt.index_video(tmp_path / "short.mp4", 3)
    gray = str(tmp_path / "gray.mkv")
    with av.open(gray, "w", format="matroska") as c:
        s = c.add_stream("ffv1", rate=30)
        s.width, s.height, s.pix_fmt = 40, 32, "gray"
        for i in range(24):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 40), 16 + 8 * i, np.uint8), format="gray")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    rotated = str(tmp_path / "rotated.mp4")
    with av.open(rotated, "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 40, 32, "yuv420p"
        s.set_display_rotation(90)
        for i in range(24):
            for p in s.encode(av.VideoFrame.from_ndarray(vt.index_frame(i, 32, 40), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    for decoder in ("decord", "pyav"):
        ds = dataset([odd, decord_bug, vfr, short, gray, rotated], num_frames=4, sampling_rate=6, num_crops=3,
                     test_crop_size=24, decoder=decoder)
        batch = collate_views([ds[i] for i in range(len(ds))])
        assert batch["failed"] == [], decoder
        assert batch["video"].shape == (18, 3, 4, 24, 24) and torch.isfinite(batch["video"]).all()
        pixels = vt.to_pixels(batch["video"])
        index = vt.decode_index(pixels)
        expected = [0, 7, 15, 23]  # span 24: linspace(0, 23, 4)
        for k in (0, 1, 5):
            assert index[3 * k].tolist() == expected, (decoder, k)
        # variable frame rate: frame i is the i-th decoded frame; the span follows the average fps
        fps = decoding.read_meta(vfr).fps
        assert index[6].tolist() == protocol_clip_indices(24, 4, 6, fps, 30, 0, 1).tolist()
        assert index[9].tolist() == [0, 2, 2, 2]  # 3 frames: clamped
        grey = pixels[12:15]
        assert np.abs(grey - grey[..., :1]).max() < 2  # grey stays grey in RGB
