"""Input validation and progress of the CLI (issue #15): binary configs, duplicate labels, data folders that
are not where a relative path points, and the infer progress bar with answers streamed as they come."""
import io
import os
import sys

import pytest

from videoats.cli import main
from videoats.data.annotations import read_labels_file
from videoats.errors import VideoATSError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic", "tiny_timesformer.yaml")


def one_error_line(capsys, command):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"videoats {command}: error: "), err
    return err


def test_a_binary_config_is_one_line(tmp_path, capsys):
    binary = tmp_path / "model.pth"
    binary.write_bytes(bytes(range(128, 256)) * 8)
    assert main(["eval", "--config", str(binary)]) == 2
    assert "not a text file" in one_error_line(capsys, "eval")


def test_a_duplicate_label_is_named(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("walking\nrunning\n\njumping\nrunning\n")
    with pytest.raises(VideoATSError, match=r"lists 'running' twice \(entries 2 and 4\)"):
        read_labels_file(str(labels))


def test_a_relative_data_folder_says_where_it_looked_and_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repo root: configs/synthetic name data/synthetic
    assert main(["eval", "--config", CONFIG, "--output", str(tmp_path / "out")]) == 2
    err = one_error_line(capsys, "eval")
    assert f"looked for {tmp_path / 'data' / 'synthetic'}, relative to the current folder" in err
    assert "videoats make-synthetic data/synthetic" in err and "DATA.PATH_TO_DATA_DIR" in err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_infer_folder_streams_answers_under_a_progress_bar(tiny_synthetic, capsys, monkeypatch):
    import videoats.inference.predict as inference

    folder = os.path.join(tiny_synthetic, "test")
    seen = []
    real = inference.predict_video

    def spy(predictor, path, **kw):  # what stdout holds when each video starts: the earlier answers
        seen.append(capsys.readouterr().out)
        return real(predictor, path, **kw)

    monkeypatch.setattr(inference, "predict_video", spy)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["infer", folder, "--model", "timesformer_tiny_8x32", "--config", CONFIG, "--topk", "1"]) == 0
    assert len(seen) == 10 and all(s.count(".mp4  (") == 1 for s in seen[1:])  # one new answer per video
    assert "infer: 100%" in terminal.getvalue() and "10/10" in terminal.getvalue()

    terminal.seek(0)
    terminal.truncate()
    assert main(["infer", folder, "--model", "timesformer_tiny_8x32", "--config", CONFIG, "--no-progress"]) == 0
    assert "%|" not in terminal.getvalue()


def test_torch_cuda_home_notice_is_kept_to_verbose(capfd):
    """torch.compile on a machine without CUDA logs "No CUDA runtime is found, using CUDA_HOME=..." from its
    C++ extension builder; the commands keep it to --verbose and leave the logger as they found it."""
    import logging

    from videoats.cli import command_logging

    notice = logging.getLogger("torch.utils.cpp_extension")
    before = notice.level
    with command_logging("infer"):
        notice.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
    assert "CUDA_HOME" not in capfd.readouterr().err and notice.level == before
    with command_logging("infer", verbose=True):
        notice.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
    assert "CUDA_HOME" in capfd.readouterr().err


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    """`videoats infer DIR | head -1`: no BrokenPipeError traceback, the status a shell expects (141)."""
    import subprocess

    script = tmp_path / "long_listing.py"
    script.write_text("import sys\n"
                      "import videoats.cli as cli\n"
                      "from videoats.commands import models\n"
                      "listing = models.human\n"
                      "models.human = lambda result: listing(result) * 3000  # megabytes of text\n"
                      "sys.exit(cli.main(['models']))\n")
    done = subprocess.run(f"'{sys.executable}' '{script}' | head -c 10 > /dev/null; echo ${{PIPESTATUS[0]}}",
                          shell=True, capture_output=True, text=True, executable="/bin/bash")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr[-800:]
    assert done.stdout.strip() == "141"


def test_infer_outputs_never_replace_an_input(tmp_path, vt, capsys):
    """--out-video or --csv naming the input video (by any name), or a video in an input folder, is refused
    before any work, and the video is left as it was; a CSV of a new name in the folder is fine."""
    folder = tmp_path / "videos"
    folder.mkdir()
    video = vt.index_video(folder / "clip.mp4", 20)
    os.symlink(video, tmp_path / "alias.mp4")
    before = open(video, "rb").read()
    for argv in (["--out-video", video], ["--csv", video], ["--out-video", str(tmp_path / "alias.mp4")]):
        assert main(["infer", video, "--model", "timesformer_tiny_8x32", "--per-clip"] + argv) == 2
        err = one_error_line(capsys, "infer")
        assert "is one of the inputs" in err and argv[0] in err
    assert main(["infer", str(folder), "--model", "timesformer_tiny_8x32", "--csv", video]) == 2
    assert "a video in the input folder" in one_error_line(capsys, "infer")
    assert open(video, "rb").read() == before
    answers = folder / "answers.csv"
    assert main(["infer", str(folder), "--model", "timesformer_tiny_8x32", "--csv", str(answers)]) == 0
    assert answers.read_text().startswith("path,window")


def test_a_one_frame_video_is_one_frame(tmp_path, vt, capsys):
    video = vt.index_video(tmp_path / "one.mp4", 1)
    assert main(["infer", video, "--model", "timesformer_tiny_8x32", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "(1 frame," in out.out and "has 1 frame but" in out.out + out.err
