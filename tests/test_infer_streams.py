"""`infer` on streams: standard input, a URL (served here over HTTP), answered window by window with the same
windows and answers as the file would get; an unsupported protocol is "not supported", not "missing". And
the CSV the answers can be written as."""
from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from videoats.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def video(tmp_path_factory, vt):
    """70 frames at 30 fps: the demo model's windows (32 frames) start at frames 0, 32 and 38 (the last)."""
    folder = tmp_path_factory.mktemp("streams")
    return vt.index_video(folder / "v.mp4", 70, height=48, width=64)


def file_windows(video, capsys):
    assert main(["infer", video, "--checkpoint", "demo", "--per-clip", "--stride", str(32 / 30), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["results"][0]["per_clip"]


def same_windows(stream_windows, file_clips):
    # the file's windows: 0..31, 32..63, and the last one ending at its last frame, 38..69 (64..95 would
    # run past the end); the stream gives the same three
    assert len(stream_windows) == len(file_clips) == 3
    assert stream_windows[-1]["frame_indices"][-1] == 69
    for w, c in zip(stream_windows, file_clips):
        assert w["frame_indices"] == c["frame_indices"]
        assert [t["label"] for t in w["topk"]] == [t["label"] for t in c["topk"]]
        assert [t["score"] for t in w["topk"]] == pytest.approx([t["score"] for t in c["topk"]], abs=1e-5)


def test_standard_input_is_answered_window_by_window(video, capsys):
    with open(video, "rb") as f:
        done = subprocess.run([sys.executable, "-m", "videoats.cli", "infer", "-", "--checkpoint", "demo", "--json"],
                              stdin=f, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-1000:]
    answer = json.loads(done.stdout)["results"][0]
    assert answer["path"] == "-" and answer["stream"] is True and answer["clips"] == 3
    same_windows(answer["per_clip"], file_windows(video, capsys))
    # the stream's top-1 is the label with the highest mean probability over its windows
    top = answer["topk"][0]
    means = {}
    for w in answer["per_clip"]:
        for t in w["topk"]:
            means.setdefault(t["label"], []).append(t["score"])
    windows = len(answer["per_clip"])
    assert top["score"] >= max(sum(v) / windows for v in means.values()) - 1e-6


def test_a_url_is_read_as_a_stream(video, capsys):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=os.path.dirname(video))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{os.path.basename(video)}"
        code = main(["infer", url, "--checkpoint", "demo", "--no-progress"])
        text = capsys.readouterr().out
        assert code == 0 and f"{url}  (stream)" in text and "stream, 3 windows:" in text
        assert main(["infer", url, "--checkpoint", "demo", "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)["results"][0]
    finally:
        server.shutdown()
    same_windows(answer["per_clip"], file_windows(video, capsys))


def test_an_unsupported_protocol_says_so(capsys):
    code = main(["infer", "s3://bucket/clip.mp4", "--checkpoint", "demo", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 2 and out["errors"][0]["reason"] == "not_supported" and "Protocol not found" in \
        out["errors"][0]["detail"]


def test_csv_rows_are_the_json_answers(video, bad_videos, tmp_path, capsys):
    import csv

    table = tmp_path / "answers.csv"
    code = main(["infer", video, bad_videos["truncated_faststart"], "--checkpoint", "demo", "--per-clip", "--csv",
                 str(table), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["csv"] == str(table)
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    answer = out["results"][0]
    assert [r["window"] for r in rows] == ["all"] + [str(c["index"]) for c in answer["per_clip"]] + [""]
    assert rows[0]["label"] == answer["topk"][0]["label"] and float(rows[0]["score"]) == answer["topk"][0]["score"]
    assert float(rows[0]["end_s"]) == answer["duration_s"]
    for r, c in zip(rows[1:], answer["per_clip"]):
        assert (float(r["start_s"]), float(r["end_s"])) == (c["start_s"], c["end_s"])
        assert [r["label"], r["label_2"], r["label_3"]] == [t["label"] for t in c["topk"][:3]]
    assert rows[-1]["path"] == bad_videos["truncated_faststart"] and rows[-1]["reason"] == "corrupt"
    assert main(["infer", video, "--checkpoint", "demo", "--csv", str(tmp_path)]) == 2  # a folder: one line
    assert "is a folder" in capsys.readouterr().err


def test_out_video_labels_every_frame_with_its_window(video, tmp_path, capsys):
    import av
    import numpy as np

    out = tmp_path / "labelled.mp4"
    code = main(["infer", video, "--checkpoint", "demo", "--per-clip", "--out-video", str(out), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["out_video"]["path"] == str(out)
    # a frame shows the latest window whose first frame it has reached: windows start at frames 0, 32, 38
    firsts = [c["frame_indices"][0] for c in result["results"][0]["per_clip"]]
    assert firsts == [0, 32, 38]
    expected = [32, 6, 32]
    assert result["out_video"]["frames_per_window"] == expected
    with av.open(str(out)) as written:
        frames = [f.to_ndarray(format="rgb24").astype(float) for f in written.decode(video=0)]
    assert len(frames) == 70 and frames[0].shape == (48, 64, 3)
    band = lambda f: f[:12]  # noqa: E731  the label band (48 // 14 = 3 rows, at least 12)
    first, same, other = band(frames[1]), band(frames[2]), band(frames[expected[0] + 1])
    assert np.abs(first - same).mean() < 8 < np.abs(first - other).mean()  # each window's own text
    assert main(["infer", video, video, "--checkpoint", "demo", "--per-clip", "--out-video", str(out)]) == 2
    assert main(["infer", video, "--checkpoint", "demo", "--per-clip", "--out-video", str(tmp_path / "x.gif")]) == 2


def test_out_video_of_a_raw_stream_labels_every_window(tmp_path, vt, capsys):
    """A raw H.264 stream has no frame times: its frames still go to their windows (by frame, not by a
    time that is always 0)."""
    import av

    raw = tmp_path / "clip.h264"
    with av.open(str(raw), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(70):
            frame = av.VideoFrame.from_ndarray(vt.index_frame(i, 48, 64), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "raw_labelled.mp4"
    assert main(["infer", str(raw), "--checkpoint", "demo", "--per-clip", "--out-video", str(out), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)["out_video"]
    assert written["frames"] == 70 and all(n > 0 for n in written["frames_per_window"])
