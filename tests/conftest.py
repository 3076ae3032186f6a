"""Shared fixtures: tiny real H.264 videos whose pixels say which frame (and which pixel) they are.

Frame-index videos paint frame i in one uniform colour whose three channels carry i in base 8 (levels 32
apart), which survives lossy yuv420p H.264 exactly (measured error <= 3 of the 16 margin). Ramp videos
carry the pixel position (R = 5x, G = 5y) and are encoded losslessly (yuv444p, crf 0; error <= 2), so crop
offsets can be read back from the pixels.
"""
from __future__ import annotations

import os
import types
from fractions import Fraction

import numpy as np
import pytest

MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)


def index_frame(i: int, height: int, width: int) -> np.ndarray:
    levels = [(i // 64) % 8, (i // 8) % 8, i % 8]
    return np.broadcast_to(np.array([lv * 32 + 16 for lv in levels], np.uint8), (height, width, 3)).copy()


def decode_index(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8-valued frames of `index_frame` -> (...) frame numbers."""
    colour = np.asarray(frames, dtype=np.float64).mean(axis=(-3, -2))
    levels = np.clip(np.round((colour - 16) / 32), 0, 7).astype(int)
    return levels[..., 0] * 64 + levels[..., 1] * 8 + levels[..., 2]


def ramp_frame(i: int, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = x * 5, y * 5, (i % 8) * 32 + 16
    return frame


def encode_video(path, frames, fps=30, pix_fmt="yuv420p", crf=18, codec="libx264", pts_ms=None,
                 faststart=False, rotate=None) -> str:
    """Encode an iterable of (H, W, 3) uint8 frames; `pts_ms` gives variable-frame-rate timestamps."""
    import av

    frames = list(frames)
    height, width = frames[0].shape[:2] if frames else (32, 40)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"crf": str(crf), "preset": "ultrafast", "threads": "1"}
        if rotate is not None:
            stream.metadata["rotate"] = str(rotate)
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if not frames:
            container.start_encoding()
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = int(pts_ms[i]), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def index_video(path, num_frames, height=32, width=40, fps=30, **kw) -> str:
    return encode_video(path, (index_frame(i, height, width) for i in range(num_frames)), fps=fps, **kw)


def ramp_video(path, num_frames, height, width, fps=30) -> str:
    return encode_video(path, (ramp_frame(i, height, width) for i in range(num_frames)), fps=fps,
                        pix_fmt="yuv444p", crf=0)


def to_pixels(video) -> np.ndarray:
    """A normalised (..., C, T, H, W) tensor back to (..., T, H, W, C) pixel values."""
    x = video.detach().double().numpy()
    x = np.moveaxis(x, -4, -1)
    return x * np.array(STD) * 255 + np.array(MEAN) * 255


def make_bad_videos(folder) -> dict:
    """{reason-ish name: path} for the kinds of damage Kinetics copies have."""
    folder = str(folder)
    good = index_video(os.path.join(folder, "good.mp4"), 40)
    faststart = index_video(os.path.join(folder, "faststart.mp4"), 40, faststart=True)
    paths = {"good": good}
    with open(good, "rb") as f:
        data = f.read()
    paths["truncated"] = os.path.join(folder, "truncated.mp4")
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    with open(faststart, "rb") as f:
        data = f.read()
    paths["truncated_faststart"] = os.path.join(folder, "truncated_faststart.mp4")
    with open(paths["truncated_faststart"], "wb") as f:
        f.write(data[: len(data) * 6 // 10])
    paths["garbage"] = os.path.join(folder, "garbage.mp4")
    with open(paths["garbage"], "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    paths["empty"] = os.path.join(folder, "empty.mp4")
    open(paths["empty"], "wb").close()
    paths["zero_frames"] = encode_video(os.path.join(folder, "zero_frames.mp4"), [])
    paths["missing"] = os.path.join(folder, "missing.mp4")
    return paths


@pytest.fixture(scope="session")
def vt():
    """The helpers above, for tests (conftest modules are not meant to be imported)."""
    return types.SimpleNamespace(
        index_frame=index_frame, decode_index=decode_index, ramp_frame=ramp_frame, encode_video=encode_video,
        index_video=index_video, ramp_video=ramp_video, to_pixels=to_pixels, make_bad_videos=make_bad_videos,
        MEAN=MEAN, STD=STD,
    )


@pytest.fixture(scope="session")
def index_video_300(tmp_path_factory) -> str:
    """300 frames at 30 fps, 32x40: the length of the protocol's worked example."""
    return index_video(tmp_path_factory.mktemp("videos") / "index300.mp4", 300)


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory) -> dict:
    return make_bad_videos(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> str:
    """A small synthetic benchmark (10 classes, 2/1/1 videos per class, 16 frames, 32x40)."""
    from videoats.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(str(out), num_classes=10, videos_per_class=(2, 1, 1), num_frames=16, size=(32, 40), seed=3)
    return str(out)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest on one thread (and do not fight over the cores with decoders).

    `VIDEOATS_TEST_THREADS=2 pytest tests` runs the suite with another thread count: float sums are then
    split differently, which is how a test that passes only by this machine's rounding shows itself."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("VIDEOATS_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def capture_only(monkeypatch):
    """`sampler="compiled"` with dynamo's "eager" backend: the same graph capture (fullgraph, dynamic shapes)
    without code generation, so the compiled sampler's graphs are checked in seconds; inductor itself is
    checked once, in test_compiled_sampler."""
    import torch
    from videoats.ats import stage

    monkeypatch.setattr(stage, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
