"""Every output path a subcommand takes is checked before any work starts: one line, exit 2 (issue #15).

Each case points one subcommand's output at a place it cannot write (an existing file where a folder is
needed, a path under a file, a folder where a file is needed, a folder that cannot be written) and expects
one `videoats CMD: error: ...` line naming the path, in well under the time any real work would take.
"""
import os
import tempfile

import pytest

from videoats.cli import main
from videoats.errors import VideoATSError
from videoats.paths import check_output_dir, check_output_file

HERE = os.path.dirname(__file__)
CONFIG = os.path.join(HERE, "..", "configs", "synthetic", "tiny_timesformer.yaml")
TRAIN_CONFIG = os.path.join(HERE, "..", "configs", "synthetic", "train_timesformer_tiny.yaml")


def _unwritable_folder(tmp_path):
    """A folder this process cannot create files in (root ignores permissions: use a read-only mount)."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return str(folder)
    for candidate in ("/sys", "/proc/sys"):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.remove(probe)
    pytest.skip("no folder this (root) process cannot write to")


@pytest.fixture
def places(tmp_path):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    return {"file": str(a_file), "under_file": str(a_file / "sub" / "out"), "folder": str(folder),
            "locked": os.path.join(_unwritable_folder(tmp_path), "videoats_out")}


# (subcommand argv builder, which bad place, text the message must contain)
CASES = {
    "eval --output file": (lambda p: ["eval", "--config", CONFIG, "--output", p["file"]], "exists as a file"),
    "eval --output under a file": (lambda p: ["eval", "--config", CONFIG, "--output", p["under_file"]],
                                   "is a file, not a folder"),
    "eval OUTPUT_DIR": (lambda p: ["eval", "--config", CONFIG, "OUTPUT_DIR", p["file"]], "OUTPUT_DIR"),
    "train OUTPUT_DIR": (lambda p: ["train", "--config", TRAIN_CONFIG, "OUTPUT_DIR", p["under_file"]],
                         "OUTPUT_DIR"),
    "visualize --output folder": (lambda p: ["visualize", "x.mp4", "--model", "timesformer_tiny_8x32", "--output",
                                             p["folder"]], "is a folder"),
    "visualize --gif": (lambda p: ["visualize", "x.mp4", "--model", "timesformer_tiny_8x32", "--gif",
                                   p["under_file"] + ".gif"], "--gif"),
    "plot --output": (lambda p: ["plot", "r.json", "--output", p["folder"]], "is a folder"),
    "convert OUT": (lambda p: ["convert", "src.pth", p["under_file"] + ".safetensors", "--model",
                               "timesformer_tiny_8x32"], "OUT"),
    "check-videos --write-clean": (lambda p: ["check-videos", "--annotation", "list.csv", "--write-clean",
                                              p["folder"]], "--write-clean"),
    "demo --output": (lambda p: ["demo", "--output", p["file"]], "exists as a file"),
    "demo --data": (lambda p: ["demo", "--data", p["under_file"]], "--data"),
    "make-synthetic OUT": (lambda p: ["make-synthetic", p["file"]], "exists as a file"),
    "make-synthetic unwritable": (lambda p: ["make-synthetic", p["locked"]], "cannot write"),
    "eval unwritable": (lambda p: ["eval", "--config", CONFIG, "--output", p["locked"]], "cannot write"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unusable_output_path_is_one_line_before_any_work(case, places, capsys):
    build, needle = CASES[case]
    code = main(build(places))
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"videoats {build(places)[0]}: error: "), captured.err
    assert needle in lines[0]


def test_check_functions_accept_what_can_be_written(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deeper") == str(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert check_output_dir(tmp_path) == str(tmp_path)
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    assert check_output_file(existing) == str(existing)  # replaced atomically later
    with pytest.raises(VideoATSError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(VideoATSError, match="exists as a file"):
        check_output_dir(existing)
    assert [p.name for p in tmp_path.iterdir()] == ["old.json"]  # the write probes leave nothing behind


def test_eval_whose_final_write_fails_still_prints_its_metrics(tiny_synthetic, tmp_path, capsys, monkeypatch):
    import videoats.evaluation.report as report

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_outputs", disk_full)
    code = main(["eval", "--config", CONFIG, "--output", str(tmp_path / "out"), "--no-progress",
                 "DATA.PATH_TO_DATA_DIR", tiny_synthetic, "DATA.NUM_WORKERS", "0"])
    captured = capsys.readouterr()
    assert code == 2
    assert "video top-1" in captured.out and "10 videos" in captured.out  # the metrics are there
    err = captured.err.splitlines()
    assert err[-1].startswith("videoats eval: error: the results could not be written to ")
    assert "No space left on device" in err[-1]


def test_version(capsys):
    import videoats

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"videoats {videoats.__version__}"


def test_demo_cache_follows_videoats_home_and_is_checked_before_work(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VIDEOATS_HOME", str(blocker))
    assert main(["demo", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert os.path.join(str(blocker), "demo_synthetic") in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any work
