"""`videoats prepare-kinetics` end to end on tiny real downloads in several containers.

Every raw frame paints its own index (conftest's `index_frame`), so a prepared clip says by its pixels which
source frames it holds; the expectations below are the frames whose timestamps fall in the row's span,
worked out from how the raw files were encoded (frame i at i/10 s), not from the code under test.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import av
import numpy as np
import pytest

from videoats.cli import main
from videoats.config import load_config
from videoats.data import build_dataset
from videoats.data.prepare import Clip, DownloadIndex, output_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS = 10
HEADER = "label,youtube_id,time_start,time_end,split"

# container -> (format, codec, pixel format, options)
CONTAINERS = {
    ".mp4": ("mp4", "libx264", "yuv420p", {"preset": "ultrafast", "threads": "1"}),
    ".webm": ("webm", "libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "threads": "1"}),
    ".mkv": ("matroska", "libx264", "yuv420p", {"preset": "ultrafast", "threads": "1"}),
    ".avi": ("avi", "mjpeg", "yuvj420p", {}),
}


ENCODE = """
import json, sys
import av
sys.path.insert(0, sys.argv[2])
from conftest import index_frame
path, fmt, codec, pix_fmt, options, first, count, height, width, fps = json.loads(sys.argv[1])
with av.open(path, mode="w", format=fmt) as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt, stream.options = width, height, pix_fmt, options
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(index_frame(first + i, height, width), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
"""


def encode(path, first, count, height=48, width=64):
    """`count` frames at FPS painting indices first, first+1, ...; frame k shown at k/FPS s. Encoded in a
    fresh interpreter: once decord is loaded in a process (as the suite's other tests load it), PyAV's VP9
    encoder refuses to open there."""
    fmt, codec, pix_fmt, options = CONTAINERS[os.path.splitext(path)[1]]
    args = [str(path), fmt, codec, pix_fmt, options, first, count, height, width, FPS]
    subprocess.run([sys.executable, "-c", ENCODE, json.dumps(args), os.path.dirname(os.path.abspath(__file__))],
                   check=True)
    return str(path)


def decode(vt, path):
    """(frame indices painted, timestamps in s, (height, width)) of every frame of a prepared clip."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    pixels = np.stack([f.to_ndarray(format="rgb24") for f in frames])
    return vt.decode_index(pixels).tolist(), [float(f.time) for f in frames], pixels.shape[1:3]


def write_csv(path, rows, header=HEADER):
    path.write_text("\n".join([header] + rows) + "\n")
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if "--json" in argv and captured.out.strip() else captured.out), captured.err


# rows of the official list (split column as the official validate.csv spells it) and what each should give
ROWS = [
    "abseiling,aaaaaaaaaaa,2,4,validate",            # whole MP4, 0-6 s: frames 20..39
    "air drumming,bbbbbbbbbbb,1,3,validate",         # cut WebM (preferred over the whole MP4): its 20 frames
    "passing American football (in game),ccccccccccc,0,2,validate",  # yt-dlp-named portrait MKV: 0..19
    "abseiling,ddddddddddd,3,10,validate",           # AVI MJPEG of 6 s: 30..59, 3 s of a 7 s span
    "abseiling,eeeeeeeeeee,0,2,validate",            # no download
    "abseiling,fffffffffff,0,2,validate",            # random bytes
    "air drumming,ggggggggggg,0,1,validate",         # an MP4 cut in half (moov lost)
    "abseiling,aaaaaaaaaaa,10,12,validate",          # span past the end of the video
]


@pytest.fixture(scope="module")
def downloads(tmp_path_factory, vt, bad_videos):
    raw = tmp_path_factory.mktemp("raw")
    (raw / "part2").mkdir()
    encode(raw / "aaaaaaaaaaa.mp4", 0, 60)
    encode(raw / "bbbbbbbbbbb_000001_000003.webm", 100, 20)
    encode(raw / "part2" / "bbbbbbbbbbb.mp4", 200, 60)  # the whole video too: the cut one must win
    encode(raw / "part2" / "A title [ccccccccccc].mkv", 0, 30, height=64, width=48)
    encode(raw / "ddddddddddd.avi", 0, 60)
    (raw / "fffffffffff.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    shutil.copy(bad_videos["truncated"], raw / "ggggggggggg.mp4")
    return str(raw)


def test_prepares_trims_resizes_and_reports(tmp_path, downloads, vt, capsys):
    csv_path = write_csv(tmp_path / "validate.csv", ROWS)
    out = tmp_path / "k600"
    code, result, err = run(capsys, "prepare-kinetics", csv_path, downloads, str(out), "--short-side", "32",
                            "--workers", "2", "--json")
    assert code == 1 and result["exit_code"] == 1, err  # missing and broken downloads fail as check-videos does
    assert result["counts"] == {"ok": 3, "missing": 1, "unreadable": 0, "corrupt": 3, "too_short": 1}
    assert result["prepared"] == 4 and result["already_done"] == 0 and result["videos"] == 8
    kinds = {(p["youtube_id"], p["clip"].rsplit("_", 2)[1]): (p["problem"], p["detail"]) for p in result["problems"]}
    assert kinds[("ddddddddddd", "000003")] == ("too_short", "the download covers 3.0 s of the 7 s span")
    assert kinds[("eeeeeeeeeee", "000000")][0] == "missing"
    assert kinds[("fffffffffff", "000000")][0] == "corrupt" and "not a video" in kinds[("fffffffffff", "000000")][1]
    assert kinds[("ggggggggggg", "000000")][0] == "corrupt"
    assert kinds[("aaaaaaaaaaa", "000010")][0] == "corrupt"
    assert "no frame in the span" in kinds[("aaaaaaaaaaa", "000010")][1]
    assert len(kinds) == 5

    # the clips: which source frames (by their painted index), when (by their timestamps), how big
    expected = {  # relative path: (source frame indices, (height, width))
        "val/abseiling/aaaaaaaaaaa_000002_000004.mp4": (range(20, 40), (32, 42)),
        "val/air_drumming/bbbbbbbbbbb_000001_000003.mp4": (range(100, 120), (32, 42)),
        "val/passing_American_football_(in_game)/ccccccccccc_000000_000002.mp4": (range(0, 20), (42, 32)),
        "val/abseiling/ddddddddddd_000003_000010.mp4": (range(30, 60), (32, 42)),
    }
    written = sorted(os.path.relpath(p, out) for p in glob.glob(str(out / "val" / "*" / "*")))
    assert written == sorted(expected)  # nothing for the bad rows, no temp files left
    for rel, (indices, size) in expected.items():
        got, times, shape = decode(vt, out / rel)
        assert got == list(indices), rel
        first = indices[0] if "bbbb" not in rel else 0  # the cut download starts at its own 0
        source_times = [(i - indices[0] + first) / FPS for i in indices]
        assert np.allclose(np.array(times) + first / FPS, source_times, atol=1e-3), rel
        assert shape == size, rel

    # the list: every row, official columns, split as the loaders look for it
    lines = (out / "val.csv").read_text().splitlines()
    assert lines[0] == HEADER and lines[1:] == [r.replace(",validate", ",val") for r in ROWS]
    assert result["annotations"] == {"val": str(out / "val.csv")}

    # check-videos reads it back: the prepared clips decode, the others are missing
    code, check, _ = run(capsys, "check-videos", "--annotation", str(out / "val.csv"), "--json",
                         "DATA.NUM_FRAMES", "8")
    assert code == 1 and check["counts"] == {"ok": 4, "missing": 4, "unreadable": 0, "corrupt": 0, "too_short": 0}
    assert sorted(os.path.basename(p["path"]) for p in check["problems"]) == sorted(
        os.path.basename(p["clip"]) for p in result["problems"] if p["problem"] != "too_short")

    # the K600 configs' test split (val.csv) finds the clips, in the list's order, labels in sorted order
    cfg = load_config(os.path.join(REPO, "configs", "kinetics600", "base.yaml"),
                      ["DATA.PATH_TO_DATA_DIR", str(out), "DATA.NUM_FRAMES", "4", "DATA.SAMPLING_RATE", "2",
                       "DATA.TEST_CROP_SIZE", "32", "DATA.DECODER", "pyav"])
    dataset = build_dataset(cfg, "test")
    assert [os.path.relpath(v.path, out) for v in dataset.videos[:4]] == list(expected)
    assert dataset.label_names == ["abseiling", "air drumming", "passing American football (in game)"]
    assert [v.label for v in dataset.videos] == [0, 1, 2, 0, 0, 0, 1, 0]
    item = dataset[0]
    assert item["failed"] is None and item["video"].shape == (3, 3, 4, 32, 32)
    assert vt.decode_index(vt.to_pixels(item["video"][1]))[0] == 20  # the clip's first frame is the span's

    # and eval evaluates the prepared videos and names the others
    tiny = os.path.join(REPO, "configs", "synthetic", "tiny_timesformer.yaml")
    code, res, err = run(capsys, "eval", "--config", tiny,
                         "--output", str(tmp_path / "eval"), "--json", "--no-progress",
                         "DATA.PATH_TO_DATA_DIR", str(out), "DATA.TEST_ANNOTATION", "val.csv", "DATA.LABELS_FILE", "",
                         "MODEL.NUM_CLASSES", "3", "DATA.DECODER", "pyav", "DATA.NUM_WORKERS", "0")
    assert code == 0, err
    coverage = res["coverage"]
    assert (coverage["expected_videos"], coverage["evaluated_videos"]) == (8, 4)


def test_resume_after_a_kill_keeps_done_clips_and_drops_the_partial(tmp_path, vt, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    encode(raw / "aaaaaaaaaaa.mp4", 0, 30)
    os.mkfifo(raw / "bbbbbbbbbbb.mp4")  # opening it blocks: the run is stuck inside clip 2, its temp file open
    csv_path = write_csv(tmp_path / "val.csv", ["abseiling,aaaaaaaaaaa,0,1,val", "abseiling,bbbbbbbbbbb,1,2,val"])
    out = tmp_path / "out"
    folder = out / "val" / "abseiling"
    done = folder / "aaaaaaaaaaa_000000_000001.mp4"
    partial = str(folder / ".bbbbbbbbbbb_000001_000002.mp4.*.tmp")
    proc = subprocess.Popen([sys.executable, "-m", "videoats.cli", "prepare-kinetics", csv_path, str(raw), str(out),
                             "--workers", "1", "--short-side", "32"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not glob.glob(partial) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert glob.glob(partial), proc.stderr.read().decode() if proc.poll() is not None else "timed out"
    finally:
        proc.kill()
        proc.wait()
    assert done.is_file() and not (folder / "bbbbbbbbbbb_000001_000002.mp4").exists()
    assert not (out / "val.csv").exists()  # the list is written when a run ends
    before = os.stat(done)

    os.remove(raw / "bbbbbbbbbbb.mp4")
    encode(raw / "bbbbbbbbbbb.mp4", 0, 30)
    code, result, err = run(capsys, "prepare-kinetics", csv_path, str(raw), str(out), "--workers", "1",
                            "--short-side", "32", "--json")
    assert code == 0, err
    assert (result["prepared"], result["already_done"]) == (1, 1)
    after = os.stat(done)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not encoded again
    assert sorted(os.listdir(folder)) == ["aaaaaaaaaaa_000000_000001.mp4", "bbbbbbbbbbb_000001_000002.mp4"]
    assert decode(vt, folder / "bbbbbbbbbbb_000001_000002.mp4")[0] == list(range(10, 20))


def test_a_subset_then_all_adds_rows_and_skips_done_clips(tmp_path, vt, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    for yid in ("aaaaaaaaaaa", "bbbbbbbbbbb"):
        encode(raw / f"{yid}.mkv", 0, 20)
    rows = ["abseiling,aaaaaaaaaaa,0,1,train", "archery,bbbbbbbbbbb,0,1,train"]
    out = tmp_path / "out"
    args = [str(raw), str(out), "--workers", "1", "--json"]
    code, first, _ = run(capsys, "prepare-kinetics", write_csv(tmp_path / "part.csv", rows[:1]), *args)
    assert code == 0 and first["prepared"] == 1
    clip = out / "train" / "abseiling" / "aaaaaaaaaaa_000000_000001.mp4"
    stamp = os.stat(clip).st_mtime_ns
    code, second, _ = run(capsys, "prepare-kinetics", write_csv(tmp_path / "all.csv", rows), *args)
    assert code == 0 and (second["prepared"], second["already_done"]) == (1, 1)
    assert os.stat(clip).st_mtime_ns == stamp
    assert (out / "train.csv").read_text().splitlines() == [HEADER] + rows
    assert decode(vt, clip)[2] == (48, 64)  # smaller than the default short side: kept, never scaled up
    code, text, _ = run(capsys, "prepare-kinetics", str(tmp_path / "all.csv"), str(raw), str(out))
    assert code == 0 and text.startswith(f"{out / 'train.csv'} (kinetics_csv): 2 videos, 2 decodable, 0 missing")
    assert "prepared 0 clips now, 2 were done before" in text


def test_unlabelled_test_list_goes_to_the_split_folder(tmp_path, vt, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    encode(raw / "aaaaaaaaaaa.mp4", 0, 20)
    csv_path = write_csv(tmp_path / "test.csv", ["aaaaaaaaaaa,0,1"], header="youtube_id,time_start,time_end")
    code, result, err = run(capsys, "prepare-kinetics", csv_path, str(raw), str(tmp_path / "out"), "--json")
    assert code == 0, err
    assert os.path.isfile(tmp_path / "out" / "test" / "aaaaaaaaaaa_000000_000001.mp4")  # split from the file name
    assert (tmp_path / "out" / "test.csv").read_text().splitlines() == [HEADER, ",aaaaaaaaaaa,0,1,test"]
    code, check, _ = run(capsys, "check-videos", "--annotation", str(tmp_path / "out" / "test.csv"), "--json",
                         "DATA.NUM_FRAMES", "4")
    assert code == 0 and check["counts"]["ok"] == 1


@pytest.mark.parametrize("case", ["no_csv", "columns", "row", "no_split", "bad_split", "label_slash", "downloads",
                                  "out_is_file", "users_list", "odd_side", "workers"])
def test_bad_input_is_one_line_before_any_work(case, tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "aaaaaaaaaaa.mp4").write_bytes(b"")
    good = write_csv(tmp_path / "val.csv", ["abseiling,aaaaaaaaaaa,0,1,val"])
    out = tmp_path / "out"
    csv_path, downloads, extra = good, str(raw), []
    if case == "no_csv":
        csv_path = str(tmp_path / "nope.csv")
    elif case == "columns":
        csv_path = write_csv(tmp_path / "v.csv", ["a.mp4,1"], header="path,label")
    elif case == "row":
        csv_path = write_csv(tmp_path / "v.csv", ["abseiling,aaaaaaaaaaa,zero,1,val"])
    elif case == "no_split":
        csv_path = write_csv(tmp_path / "list.csv", ["abseiling,aaaaaaaaaaa,0,1"],
                             header="label,youtube_id,time_start,time_end")
    elif case == "bad_split":
        csv_path = write_csv(tmp_path / "v.csv", ["abseiling,aaaaaaaaaaa,0,1,holdout"])
    elif case == "label_slash":
        csv_path = write_csv(tmp_path / "v.csv", ["a/b,aaaaaaaaaaa,0,1,val"])
    elif case == "downloads":
        downloads = str(tmp_path / "no_downloads")
    elif case == "out_is_file":
        out.write_text("x")
    elif case == "users_list":
        out.mkdir()
        (out / "val.csv").write_text("my/own/video.mp4 3\n")
    elif case == "odd_side":
        extra = ["--short-side", "255"]
    elif case == "workers":
        extra = ["--workers", "0"]
    before = sorted(os.listdir(out)) if out.is_dir() else None
    code = main(["prepare-kinetics", csv_path, downloads, str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("videoats prepare-kinetics: error:")
    assert (sorted(os.listdir(out)) if out.is_dir() else None) == before  # nothing written
    if case == "users_list":
        assert (out / "val.csv").read_text() == "my/own/video.mp4 3\n"


def test_download_names(tmp_path):
    names = ["aaaaaaaaaaa.mp4", "bbbbbbbbbbb_000010_000020.webm", "cc_cc-ccccc_10_20.mkv",
             "sub/Some title [dddddddd-_d].mp4", "eeeeeeeeeee.mp4.part", ".fffffffffff.mp4", "ggggggggggg.f137.mp4",
             "hhhhhhhhhhh.txt", ".hidden/iiiiiiiiiii.mp4"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    index = DownloadIndex(str(tmp_path))

    def find(yid, start=0, end=10):
        path, cut = index.find(Clip(yid, start, end, "x", "val"))
        return (os.path.relpath(path, tmp_path) if path else "", cut)

    assert find("aaaaaaaaaaa") == ("aaaaaaaaaaa.mp4", False)
    assert find("bbbbbbbbbbb", 10, 20) == ("bbbbbbbbbbb_000010_000020.webm", True)
    assert find("bbbbbbbbbbb", 0, 10) == ("", False)  # another span of it was downloaded, not this one
    assert find("cc_cc-ccccc", 10, 20) == ("cc_cc-ccccc_10_20.mkv", True)  # ids may hold _ and -
    assert find("dddddddd-_d") == ("sub/Some title [dddddddd-_d].mp4", False)
    for yid in ("eeeeeeeeeee", "fffffffffff", "ggggggggggg", "hhhhhhhhhhh", "iiiiiiiiiii"):
        assert find(yid) == ("", False), yid


def test_output_size_by_hand():
    assert output_size(48, 64, 32) == (32, 42)  # 64 * 32 / 48 = 42.67 -> 42 (even)
    assert output_size(64, 48, 32) == (42, 32)
    assert output_size(480, 854, 256) == (256, 456)  # 455.5 -> 456
    assert output_size(1080, 1920, 256) == (256, 456)  # 455.1 -> 456
    assert output_size(240, 320, 256) == (240, 320)  # never up
    assert output_size(49, 65, 0) == (48, 64)  # kept, made even for H.264 4:2:0



def test_variable_frame_rate_keeps_its_timestamps(tmp_path, vt, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    pts_ms = [0, 40, 300, 340, 900, 1000, 1033, 1400, 1950, 1999, 2000, 2500]  # frame i painted i
    vt.encode_video(raw / "aaaaaaaaaaa.mp4", [vt.index_frame(i, 48, 64) for i in range(len(pts_ms))], fps=10,
                    pts_ms=pts_ms)
    csv_path = write_csv(tmp_path / "val.csv", ["abseiling,aaaaaaaaaaa,1,2,val"])
    code, _, err = run(capsys, "prepare-kinetics", csv_path, str(raw), str(tmp_path / "out"), "--workers", "1")
    assert code == 0, err
    indices, times, _ = decode(vt, tmp_path / "out" / "val" / "abseiling" / "aaaaaaaaaaa_000001_000002.mp4")
    assert indices == [5, 6, 7, 8, 9]  # shown at 1.000 ... 1.999 s; 2.000 s is the next clip's
    assert np.allclose(times, [0, 0.033, 0.4, 0.95, 0.999], atol=1e-3)  # the gaps kept, not made uniform
