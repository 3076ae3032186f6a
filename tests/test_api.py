"""`videoats.Recognizer`: the same answers from a file, from its frames in memory and from a stream of them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import videoats
from videoats.data.decoding import DecodeFailure
from videoats.errors import VideoATSError


@pytest.fixture(scope="module")
def recognizer():
    return videoats.Recognizer("demo", device="cpu")


@pytest.fixture(scope="module")
def video(tmp_path_factory, vt):
    """70 frames of moving noise squares at 30 fps, 48x64: the demo model's clip spans 32 frames."""
    rng = np.random.default_rng(1)
    frames = []
    for i in range(70):
        frame = np.full((48, 64, 3), 40, np.uint8)
        frame[10:26, i % 48:i % 48 + 16] = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        frames.append(frame)
    path = vt.encode_video(tmp_path_factory.mktemp("api") / "v.mp4", frames, pix_fmt="yuv444p", crf=0)
    return path


@pytest.fixture(scope="module")
def decoded(video):
    import av

    with av.open(video) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_recognizer_is_exported_and_runs_the_shipped_model_at_its_budget(recognizer):
    assert videoats.Recognizer.__doc__ and "loaded once" in videoats.Recognizer.__doc__
    d = recognizer.describe()
    assert d["ats"]["tokens"] == 0.7 and d["device"] == "cpu" and len(recognizer.label_names) == 10
    dense = videoats.Recognizer("zoo:demo", ats=False)
    assert dense.describe()["ats"] is None


def test_frames_in_memory_answer_as_the_file_does(recognizer, video, decoded):
    from_file = recognizer.predict(video, topk=3, per_clip=True)
    for frames in (decoded, torch.from_numpy(decoded)):
        from_frames = recognizer.predict(frames, fps=30, topk=3, per_clip=True)
        assert [t["label"] for t in from_frames["topk"]] == [t["label"] for t in from_file["topk"]]
        assert [t["score"] for t in from_frames["topk"]] == pytest.approx([t["score"] for t in from_file["topk"]],
                                                                           abs=1e-5)
        assert from_frames["coverage"] == from_file["coverage"]
        assert [c["frame_indices"] for c in from_frames["per_clip"]] == [c["frame_indices"] for c in
                                                                        from_file["per_clip"]]


def test_a_stream_answers_each_window_as_soon_as_it_is_complete(recognizer, video, decoded):
    consumed = []

    def camera():
        for i, frame in enumerate(decoded):
            consumed.append(i)
            yield frame

    seen = []
    windows = []
    for w in recognizer.stream(camera(), fps=30, topk=3, callback=seen.append):
        windows.append((w, len(consumed)))
    assert seen == [w for w, _ in windows]
    # a clip spans 8 x 4 = 32 frames: windows start at 0 and 32 and end at frames 31 and 63; the third
    # (64..95) never completes in 70 frames, so when the stream ends one more ends at its last frame (38..69)
    assert [w["frame_indices"] for w, _ in windows] == [[0, 4, 8, 13, 17, 22, 26, 31],
                                                        [32, 36, 40, 45, 49, 54, 58, 63],
                                                        [38, 42, 46, 51, 55, 60, 64, 69]]
    assert [n for _, n in windows] == [32, 64, 70]  # each right after its last frame, not at the end
    assert windows[1][0]["start_s"] == pytest.approx(32 / 30, abs=1e-4)
    per_clip = recognizer.predict(video, topk=3, per_clip=True, stride=32 / 30)["per_clip"]
    assert len(per_clip) == len(windows)
    for (w, _), c in zip(windows, per_clip):  # the same window of the file gives the same answer
        assert w["frame_indices"] == c["frame_indices"]
        assert [t["score"] for t in w["topk"]] == pytest.approx([t["score"] for t in c["topk"]], abs=1e-5)


def test_a_short_stream_still_answers_and_says_so(recognizer, decoded):
    (only,) = list(recognizer.stream(iter(decoded[:10]), fps=30))
    assert only["frame_indices"][-1] == 9 and "10 frames" in only["short"]


def test_bad_inputs(recognizer, video, decoded, tmp_path):
    answers = recognizer.predict([video, tmp_path / "missing.mp4"])
    assert answers[0]["topk"] and answers[1]["error"]["reason"] == "missing"
    with pytest.raises(DecodeFailure):
        recognizer.predict(tmp_path / "missing.mp4")
    with pytest.raises(VideoATSError, match="fps"):
        recognizer.predict(decoded)
    with pytest.raises(VideoATSError, match="uint8"):
        recognizer.predict(decoded.astype(np.float32), fps=30)
    with pytest.raises(VideoATSError, match=r"\(T, H, W, 3\)"):
        recognizer.predict(decoded[0], fps=30)
    with pytest.raises(VideoATSError, match="np.stack"):  # a list is of paths, not of frames
        recognizer.predict(list(decoded), fps=30)
    for fps in (float("nan"), float("inf"), 0):
        with pytest.raises(VideoATSError, match="positive number"):
            recognizer.predict(decoded, fps=fps)
        with pytest.raises(VideoATSError, match="positive"):
            list(recognizer.stream(iter(decoded), fps=fps))
    for stride in (float("nan"), float("inf"), -1.0):
        with pytest.raises(VideoATSError, match="positive"):
            recognizer.predict(video, per_clip=True, stride=stride)
        with pytest.raises(VideoATSError, match="positive"):
            list(recognizer.stream(iter(decoded), fps=30, stride=stride))


def test_a_source_streams_as_its_frames_do(recognizer, video, decoded):
    from_frames = list(recognizer.stream(iter(decoded), fps=30))
    from_source = list(recognizer.stream(video))  # a path (or URL) read as it comes, its own frame rate
    assert [w["frame_indices"] for w in from_source] == [w["frame_indices"] for w in from_frames]
    assert [w["topk"][0]["score"] for w in from_source] == pytest.approx([w["topk"][0]["score"] for w in from_frames],
                                                                         abs=1e-5)
    with pytest.raises(VideoATSError, match="fps"):
        list(recognizer.stream(iter(decoded)))
