"""Damaged videos are reported once, in our words; the video libraries' own C-level logs never reach the user
(issue #15). The commands run in subprocesses so that stderr is read at the file-descriptor level, where
FFmpeg and decord write (pytest's capsys would not see those lines at all)."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from videoats.data.decoding import DecodeFailure, read_frames, refuse_truncated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic", "tiny_timesformer.yaml")
TRAIN_CONFIG = os.path.join(ROOT, "configs", "synthetic", "train_timesformer_tiny.yaml")
LIBRARY_MARKS = ("@ 0x", "video_reader.cc", "threaded_decoder", "[mov,", "[h264", "moov atom")


def damaged_video(vt, path) -> str:
    """Noise frames (every macroblock matters) with the back 70% of the file overwritten by garbage: the
    header is intact, decoding breaks part way, and FFmpeg inside decord logs dozens of lines about it."""
    rng = np.random.default_rng(0)
    src = vt.encode_video(str(path) + ".src.mp4", [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
                                                   for _ in range(40)], faststart=True)
    data = bytearray(open(src, "rb").read())
    for k in range(int(len(data) * 0.3), len(data), 997):
        data[k:k + 40] = rng.bytes(len(data[k:k + 40]))
    with open(path, "wb") as f:
        f.write(bytes(data))
    os.remove(src)
    return str(path)


def run(*argv):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore::FutureWarning")  # fvcore's torch.jit notice is not a decoder line
    env.pop("VIDEOATS_VERBOSE", None)
    proc = subprocess.run([sys.executable, "-m", "videoats.cli", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    return proc.returncode, proc.stdout, proc.stderr


def assert_only_our_lines(command: str, err: str, progress_lines: bool = False) -> None:
    """No library line; every line ours (train also prints its progress lines, which name no video)."""
    for line in err.splitlines():
        assert not any(mark in line for mark in LIBRARY_MARKS), f"library log line: {line!r}"
        if not progress_lines or ".mp4" in line:
            assert line.startswith(f"videoats {command}:"), f"foreign stderr line: {line!r}\n{err}"


@pytest.fixture(scope="module")
def damaged_set(tiny_synthetic, vt, tmp_path_factory):
    """The tiny synthetic set with its first test and first training video damaged, and a garbage one."""
    root = tmp_path_factory.mktemp("damaged") / "data"
    shutil.copytree(tiny_synthetic, root)
    victims = {}
    for split in ("test", "train"):
        with open(root / f"{split}.csv") as f:
            row = list(csv.DictReader(f))[0]
        path = root / split / row["label"] / f"{row['youtube_id']}_{int(row['time_start']):06d}_" \
                                            f"{int(row['time_end']):06d}.mp4"
        damaged_video(vt, path)
        victims[split] = str(path)
    garbage = root / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(1).bytes(4096))
    victims["garbage"] = str(garbage)
    return str(root), victims


def test_the_damaged_file_is_noisy_with_verbose(damaged_set):
    """The premise: the libraries do talk about this file; --verbose lets them."""
    _, victims = damaged_set
    code, out, err = run("infer", victims["test"], "--model", "timesformer_tiny_8x32", "--verbose")
    assert code == 2
    assert sum(any(m in line for m in LIBRARY_MARKS) for line in err.splitlines()) >= 5, err


def test_infer_reports_each_bad_file_once(damaged_set):
    _, v = damaged_set
    code, out, err = run("infer", v["test"], v["garbage"], "--model", "timesformer_tiny_8x32", "--no-progress")
    assert code == 2
    assert_only_our_lines("infer", err)
    assert err.splitlines()[-1].startswith("videoats infer: error: no video could be processed (2 bad files")
    # every bad file named, with its reason, once
    assert out.count(v["test"]) == 1 and out.count(v["garbage"]) == 1
    assert "frames decodable" in out and "not_a_video" in out


def test_eval_check_videos_and_train_print_no_library_lines(damaged_set, tmp_path):
    root, v = damaged_set
    code, out, err = run("eval", "--config", CONFIG, "DATA.PATH_TO_DATA_DIR", root, "--output", tmp_path / "e",
                         "DATA.NUM_WORKERS", "2", "--no-progress")  # worker processes decode
    assert code == 0, err
    assert_only_our_lines("eval", err)
    assert sum(v["test"] in line for line in err.splitlines()) == 1  # one warning for the damaged video
    assert "9 of 10 videos (1 unreadable, see results.json)" in out

    code, out, err = run("check-videos", "--config", CONFIG, "DATA.PATH_TO_DATA_DIR", root)
    assert code == 1
    assert err == ""
    assert "1 corrupt" in out and v["test"] in out

    code, out, err = run("train", "--config", TRAIN_CONFIG, "DATA.PATH_TO_DATA_DIR", root, "OUTPUT_DIR",
                         tmp_path / "t", "TRAIN.EPOCHS", "1", "TRAIN.BATCH_SIZE", "4", "DATA.NUM_WORKERS", "2",
                         "DATA.SAMPLING_RATE", "2", "TRAIN.EVAL_PERIOD", "1", "--no-progress")
    assert code == 0, err
    assert_only_our_lines("train", err, progress_lines=True)
    assert v["train"] not in err  # training draws the decodable frames of a truncated video (the policy)
    assert "on 9 of 10 videos (1 unreadable, see results.json)" in out


def test_reasons_are_true(tmp_path, bad_videos):
    def reason(path):
        with pytest.raises(DecodeFailure) as e:
            read_frames(str(path), lambda n, fps: np.arange(min(n, 4)), timeout=20)
        return e.value.reason, e.value.detail

    folder = tmp_path / "clip.mp4"
    folder.mkdir()
    assert reason(folder) == ("unreadable", "it is a folder, not a video file")
    assert reason(tmp_path / "nothing.mp4") == ("missing", "no such file")
    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert reason(a_file / "x.mp4")[0] == "missing"
    assert reason(bad_videos["zero_frames"]) == ("zero_frames", "the file has no video stream")
    # the partially decodable file: known as such whichever frames are asked for (see data.decoding)
    for pick in (lambda n, fps: np.arange(2), lambda n, fps: np.arange(n)):
        frames, _, meta = read_frames(bad_videos["truncated_faststart"], pick, timeout=20)
        assert meta.truncated and len(frames) == len(pick(40, 30.0))
        with pytest.raises(DecodeFailure) as e:
            refuse_truncated(meta)
        assert e.value.reason == "corrupt" and e.value.detail == "truncated: the file ends inside a packet (12 of 40 frames decodable)"


def test_after_a_decord_failure_the_process_ends_without_native_teardown():
    """A decord reader that failed mid-decode can abort the interpreter's teardown (exit -6, "terminate called
    without an active exception") after the command reported the file: `console_main` then ends the process
    with the command's own code, its output flushed, and no teardown (an atexit handler shows whether it ran).
    Without a failure the teardown runs as usual."""
    script = ("import atexit, sys; from videoats import cli; from videoats.data import decoding; "
              "atexit.register(lambda: print('teardown', flush=True)); "
              "cli.main = lambda: (print('answer', end=''), 7)[1]; "
              "decoding._DECORD_FAILED.set() if sys.argv[1] == 'failed' else None; cli.console_main()")
    for state, teardown in (("failed", False), ("fine", True)):
        proc = subprocess.run([sys.executable, "-c", script, state], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)
        assert proc.returncode == 7 and proc.stdout.startswith("answer")
        assert ("teardown" in proc.stdout) == teardown
