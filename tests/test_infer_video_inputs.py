"""How `infer` reads real-world files: frames resized as they are decoded (the same numbers as resizing the
whole clip), cut downloads in every common container caught, variable-frame-rate videos sampled by time
with window times that are the frames' own timestamps, and whole-video answers that cover the video."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from videoats.cli import main
from videoats.data import decoding
from videoats.data.clips import (covered_seconds, cover_plan, crop_views, make_views, protocol_frame, read_clip_frames,
                                 sliding_plan)
from videoats.data.decoding import DecodeFailure, read_frames, read_meta, refuse_truncated


def settings(**kw):
    base = dict(num_frames=4, sampling_rate=2, target_fps=30.0, test_crop_size=24, num_clips=1, num_crops=3,
                clip_sampling="official", decoder="decord", decode_short_side=0, decode_timeout=30.0,
                decode_threads=1, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
    base.update(kw)
    return SimpleNamespace(**base)


def textured(i: int, height: int, width: int) -> np.ndarray:
    """Noise that changes every frame: every pixel matters to a resize."""
    return np.random.default_rng(i).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(path, fmt, codec, frames, fps=30, pix_fmt="yuv420p", options=None):
    import av

    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        stream.options = options or {}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


# ------------------------------------------------------------------------------------ bounded memory


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_frames_resized_as_decoded_give_the_protocol_views_of_the_full_frames(vt, tmp_path, decoder):
    # 45x70 (odd, wide) frames resized to a 24 short side: a resize that really interpolates
    path = vt.encode_video(tmp_path / "tex.mp4", [textured(i, 45, 70) for i in range(20)], pix_fmt="yuv444p", crf=0)
    s = settings(decoder=decoder)
    plan = lambda n, fps: sliding_plan(s, n, fps)  # noqa: E731
    full = [(first, frames) for first, frames in read_clip_frames(path, s, plan)][1:]
    small = [(first, frames) for first, frames in read_clip_frames(path, s, plan, transform=protocol_frame(s))][1:]
    assert [f for f, _ in full] == [f for f, _ in small]
    for (_, uint8_frames), (_, resized) in zip(full, small):
        assert uint8_frames.shape[-3:] == (45, 70, 3) and resized.shape[-3:] == (3, 24, 37)  # floor(70 / 45 * 24)
        expected = make_views(uint8_frames, s, 3)  # normalise the whole clip, resize, crop: the protocol
        got = crop_views(resized, s, 3)
        assert got.shape == expected.shape == (3 * uint8_frames.shape[0], 3, 4, 24, 24)
        assert torch.allclose(got, expected, rtol=0, atol=1e-5)


def test_decord_reads_in_chunks_of_bounded_bytes_and_closes_while_converting(vt, tmp_path, monkeypatch):
    if not decoding.decord_available():
        pytest.skip("decord not installed")
    path = vt.index_video(tmp_path / "long.mp4", 60)  # 32x40 frames: 3840 bytes each
    monkeypatch.setattr(decoding, "DECORD_CHUNK_BYTES", 3840 * 7)  # 7 frames a call
    asked, opened = [], []
    real_batch, real_init = decoding._decord.VideoReader.get_batch, decoding._decord.VideoReader.__init__
    monkeypatch.setattr(decoding._decord.VideoReader, "get_batch",
                        lambda self, idx: asked.append(len(idx)) or real_batch(self, idx))
    monkeypatch.setattr(decoding._decord.VideoReader, "__init__",
                        lambda self, *a, **k: opened.append(1) or real_init(self, *a, **k))
    frames, _, _ = read_frames(path, lambda n, fps: np.arange(n), backend="decord", fallback=False)
    assert vt.decode_index(frames).tolist() == list(range(60))
    assert asked == [7] * 8 + [4] and len(opened) == 1  # 60 frames (the last one is also the checked one)
    asked.clear(), opened.clear()
    small, _, _ = read_frames(path, lambda n, fps: np.arange(n), backend="decord", fallback=False,
                              transform=lambda f: f[:1, :1].copy())
    assert asked == [7] * 8 + [4] and len(opened) == 9  # reopened for every chunk after the first
    assert small.shape == (60, 1, 1, 3) and vt.decode_index(small).tolist() == list(range(60))


# ------------------------------------------------------------------------------------ cut downloads

CONTAINERS = {  # name: (format, codec, pix_fmt, options)
    "mp4": ("mp4", "libx264", "yuv420p", {"movflags": "faststart"}),
    "webm": ("webm", "libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    "mkv": ("matroska", "libx264", "yuv420p", {}),
    "avi": ("avi", "mjpeg", "yuvj420p", {}),
}


ENCODE = """
import json, sys
import av, numpy as np
fmt, codec, pix_fmt, options, path = json.loads(sys.argv[1])
container_options = {"movflags": options.pop("movflags")} if "movflags" in options else {}
with av.open(path, "w", format=fmt, options=container_options) as container:
    stream = container.add_stream(codec, rate=30)
    stream.height, stream.width, stream.pix_fmt = 48, 64, pix_fmt
    stream.options = options
    for i in range(60):
        array = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
"""


@pytest.fixture(scope="module")
def whole_files(tmp_path_factory):
    """60 noise frames at 30 fps in each container, encoded in a fresh interpreter: with decord loaded
    first (as videoats loads it), PyAV's VP9 encoder refuses to open."""
    folder = tmp_path_factory.mktemp("containers")
    out = {}
    for name, (fmt, codec, pix_fmt, options) in CONTAINERS.items():
        out[name] = str(folder / f"whole.{name}")
        subprocess.run([sys.executable, "-c", ENCODE, json.dumps([fmt, codec, pix_fmt, options, out[name]])],
                       check=True)
    return out


@pytest.mark.parametrize("name", sorted(CONTAINERS))
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_a_cut_download_is_truncated_in_every_container(whole_files, tmp_path, name, backend):
    whole = whole_files[name]
    meta = read_meta(whole, backend=backend)
    assert not meta.truncated and meta.truncation == "" and meta.num_frames == 60
    data = open(whole, "rb").read()
    for share in (0.45, 0.8, 0.95):  # early, late, and a few frames before the end
        cut = tmp_path / f"cut{int(share * 100)}.{name}"
        cut.write_bytes(data[: int(len(data) * share)])
        with pytest.raises(DecodeFailure) as e:
            refuse_truncated(read_meta(str(cut), backend=backend))
        assert e.value.reason == "corrupt" and e.value.detail.startswith(("truncated", "decord", "PyAV")), \
            (share, e.value.detail)


WITH_SOUND = """
import sys
import av, numpy as np
path, fmt, vcodec, acodec, video_s, audio_s = sys.argv[1:]
with av.open(path, "w", format=fmt) as container:
    video = container.add_stream(vcodec, rate=30)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    if vcodec == "libx264":
        video.options = {"preset": "medium"}  # B-frames: presentation order differs from decoding order
    audio = container.add_stream(acodec, rate=48000)
    audio.layout = "stereo"
    for i in range(int(float(video_s) * 30)):
        array = np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        for packet in video.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    for start in range(0, int(float(audio_s) * 48000), 1024):
        frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = 48000, start
        for packet in audio.encode(frame):
            container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)
"""


@pytest.mark.parametrize("name, fmt, vcodec, acodec", [("mp4", "mp4", "libx264", "aac"),
                                                       ("webm", "webm", "libvpx-vp9", "libopus"),
                                                       ("mkv", "matroska", "libx264", "aac")])
def test_whole_files_with_a_longer_or_shorter_soundtrack_are_not_truncated(tmp_path, name, fmt, vcodec, acodec):
    """The container's duration is the longest stream's; packet ends are taken over every stream, so a sound
    track that outlasts the picture is not a cut, and B-frames (presentation order) are not either."""
    for audio_s in ("2.5", "1.5"):
        path = str(tmp_path / f"sound{audio_s}.{name}")
        subprocess.run([sys.executable, "-c", WITH_SOUND, path, fmt, vcodec, acodec, "2", audio_s], check=True)
        meta = read_meta(path)
        assert meta.num_frames == 60 and not meta.truncated, (audio_s, meta.truncation)
        data = open(path, "rb").read()
        (tmp_path / f"cut.{name}").write_bytes(data[: len(data) * 7 // 10])
        with pytest.raises(DecodeFailure):
            refuse_truncated(read_meta(str(tmp_path / f"cut.{name}")))


def test_cut_webm_is_refused_by_infer_and_check_videos(whole_files, tmp_path, capsys):
    data = open(whole_files["webm"], "rb").read()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: len(data) // 2])
    code = main(["infer", str(cut), "--model", "timesformer_tiny_8x32", "--per-clip", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 2 and out["results"] == []
    assert out["errors"][0]["reason"] == "corrupt" and "container says 2.00 s" in out["errors"][0]["detail"]
    listing = tmp_path / "list.csv"
    listing.write_text(f"{cut} 0\n{whole_files['webm']} 0\n")
    code = main(["check-videos", "--annotation", str(listing), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["counts"]["corrupt"] == 1 and out["counts"]["ok"] == 1


def test_only_decoder_errors_count_as_a_bad_file(vt, tmp_path, monkeypatch):
    path = vt.index_video(tmp_path / "ok.mp4", 10)

    def broken_reader(*args, **kwargs):
        raise TypeError("a bug in our code")

    monkeypatch.setattr(decoding, "_READERS", {"decord": broken_reader, "pyav": broken_reader})
    with pytest.raises(TypeError):  # not "corrupt": a bug must show as one
        read_frames(path, lambda n, fps: np.arange(n))


# ------------------------------------------------------------------------------------ variable frame rate

VFR_MS = [20 * i for i in range(30)] + [600 + 100 * i for i in range(30)]  # 50 fps for 0.6 s, then 10 fps


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory, vt):
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    return vt.encode_video(path, [vt.index_frame(i, 32, 40) for i in range(60)], pts_ms=VFR_MS)


def test_vfr_clips_take_the_frame_shown_at_each_time_and_windows_are_frame_times(vfr_video, vt, capsys):
    code = main(["infer", vfr_video, "--model", "timesformer_tiny_8x32", "--per-clip", "--views", "1x1",
                 "DATA.SAMPLING_RATE", "4", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    r = out["results"][0]
    assert r["variable_frame_rate"] is True
    times = np.array(VFR_MS) / 1000.0
    fps = r["fps"]
    for c in r["per_clip"]:
        used = c["frame_indices"]
        assert c["start_s"] == pytest.approx(times[used[0]], abs=1e-4)  # the first frame's own timestamp
        end = times[used[-1] + 1] if used[-1] + 1 < len(times) else times[-1] + 1 / fps
        assert c["end_s"] == pytest.approx(end, abs=1e-4)
    # clips even in time: the positions of a clip, as times, each take the frame on screen at that time
    s = settings(num_frames=8, sampling_rate=4, test_crop_size=32)
    plan = sliding_plan(s, 60, fps)
    for c, start in zip(r["per_clip"], plan.starts):
        grid = (start + np.arange(8) * (plan.span - 1) / 7) / fps
        shown = times[c["frame_indices"]]
        following = np.append(times, np.inf)[np.array(c["frame_indices"]) + 1]
        assert np.all(shown <= grid + 1e-6) and np.all(grid < following + 1e-6), (shown, grid)
    # the decoder's frame i is the frame with the i-th timestamp (the index colours say which frame it is)
    chunks = list(read_clip_frames(vfr_video, s, lambda n, f: sliding_plan(s, n, f)))
    decoded = np.concatenate([vt.decode_index(frames) for _, frames in chunks[1:]])
    assert decoded.tolist() == [c["frame_indices"] for c in r["per_clip"]]


def test_constant_rate_windows_are_unchanged(vt, tmp_path, capsys):
    path = vt.index_video(tmp_path / "cfr.mp4", 48)
    code = main(["infer", path, "--model", "timesformer_tiny_8x32", "--per-clip", "--views", "1x1",
                 "DATA.SAMPLING_RATE", "2", "--json"])
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert code == 0 and r["variable_frame_rate"] is False
    assert [(c["start_s"], c["end_s"]) for c in r["per_clip"]] == [
        (0.0, pytest.approx(16 / 30, abs=1e-4)), (pytest.approx(16 / 30, abs=1e-4), pytest.approx(32 / 30, abs=1e-4)),
        (pytest.approx(32 / 30, abs=1e-4), pytest.approx(48 / 30, abs=1e-4))]
    first = [0, 2, 4, 6, 8, 10, 12, 15]  # int(linspace(0, 15, 8)): 15 / 7 * k truncated
    assert [c["frame_indices"] for c in r["per_clip"]] == [first, [i + 16 for i in first], [i + 32 for i in first]]


# ------------------------------------------------------------------------------------ coverage


def test_covered_seconds_is_the_union_of_the_windows():
    assert covered_seconds([(0, 2), (1, 3), (5, 6)]) == 4
    assert covered_seconds([(5, 6), (0, 1), (0.5, 0.75)]) == 2
    assert covered_seconds([]) == 0


@pytest.mark.parametrize("num_frames", [16, 17, 40, 100, 159])
def test_cover_plan_leaves_no_gap(num_frames):
    s = settings(num_frames=8, sampling_rate=2)  # a clip spans 16 frames at 30 fps
    plan = cover_plan(s, num_frames, 30.0, max_clips=10)
    assert len(plan.starts) == min(10, -(-num_frames // 16))
    windows = [plan.window(c) for c in range(len(plan.starts))]
    assert covered_seconds(windows) == pytest.approx(min(num_frames, 16 * len(plan.starts)) / 30, abs=1e-6)


def test_whole_video_text_says_what_it_covered(vt, tmp_path, capsys):
    path = vt.index_video(tmp_path / "v.mp4", 96)  # 3.2 s, clips of 8 frames: 12 would tile it, 10 are used
    code = main(["infer", path, "--model", "timesformer_tiny_8x32", "--no-progress", "DATA.SAMPLING_RATE", "1"])
    text = capsys.readouterr().out
    assert code == 0
    assert "covered 2.67 of 3.20 s (83%): 10 clips at 0.00-0.27" in text and "(10 in all) s" in text
    assert "30 views" in text
    code = main(["infer", path, "--model", "timesformer_tiny_8x32", "--views", "1x1", "DATA.SAMPLING_RATE", "1",
                 "--json"])
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["coverage"] == {"windows_s": [[0.0, pytest.approx(8 / 30, abs=1e-4)]],
                             "covered_s": pytest.approx(8 / 30, abs=1e-4), "fraction": pytest.approx(1 / 12, abs=1e-3)}
    assert r["views"] == 1


# ------------------------------------------------------------------------------------ odd inputs


def test_a_video_shorter_than_a_clip_is_answered_with_a_note(vt, tmp_path, capsys):
    path = vt.index_video(tmp_path / "short.mp4", 10)  # the demo model's clip spans 8 x 4 = 32 frames
    code = main(["infer", path, "--checkpoint", "demo", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "note: the video has 10 frames but a clip spans 32" in text
    code = main(["infer", vt.index_video(tmp_path / "long.mp4", 40), "--checkpoint", "demo", "--json"])
    assert code == 0 and "short" not in json.loads(capsys.readouterr().out)["results"][0]


def test_a_raw_h264_stream_is_decoded(tmp_path, capsys):
    """An elementary stream has no container index nor timestamps: its frames are counted from its packets
    (a seek back to the start, which such a stream cannot do, once made it "corrupt")."""
    import av

    path = str(tmp_path / "raw.h264")
    with av.open(path, "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(40):
            array = np.full((48, 64, 3), i * 5, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    code = main(["infer", path, "--checkpoint", "demo", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["errors"] == [] and out["results"][0]["num_frames"] == 40


def test_a_long_video_reports_its_progress_clip_by_clip(vt, tmp_path, monkeypatch):
    from videoats.data import clips as clip_module
    from videoats.inference.predict import predict_video
    from videoats.inference.predictor import load_predictor

    monkeypatch.setattr(clip_module, "MAX_FRAMES_PER_READ", 24)  # 3 clips of 8 frames a read
    path = vt.index_video(tmp_path / "v.mp4", 80)
    predictor = load_predictor(model_name="timesformer_tiny_8x32", opts=["DATA.SAMPLING_RATE", "1"])
    seen = []
    r = predict_video(predictor, path, per_clip=True, on_progress=lambda done, total: seen.append((done, total)))
    assert len(r["per_clip"]) == 10  # 80 frames, clips of 8
    assert seen == [(3, 10), (6, 10), (9, 10), (10, 10)]
