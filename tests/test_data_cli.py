"""`videoats check-videos` and `videoats make-synthetic` through the CLI entry point."""
import json
import os
import shutil

from videoats.cli import main

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic", "base.yaml")


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, (json.loads(out) if "--json" in argv and out.strip() else out)


def test_check_videos_counts_problems_and_writes_a_clean_list(tmp_path, tiny_synthetic, bad_videos, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_synthetic, root)
    lines = open(root / "test.csv").read().splitlines()
    victims = [lines[1], lines[2], lines[3]]
    def clip(line):
        label, yid, start, end, split = line.split(",")
        return root / "test" / label / f"{yid}_{int(start):06d}_{int(end):06d}.mp4"
    os.remove(clip(victims[0]))
    shutil.copy(bad_videos["garbage"], clip(victims[1]))
    shutil.copy(bad_videos["zero_frames"], clip(victims[2]))
    code, result = run(capsys, "check-videos", "--config", CONFIG, "--json", "--write-clean",
                       str(tmp_path / "clean.csv"), "DATA.PATH_TO_DATA_DIR", str(root), "DATA.NUM_FRAMES", "20")
    assert code == 1 and result["exit_code"] == 1
    assert result["videos"] == 10 and result["format"] == "kinetics_csv"
    assert result["counts"] == {"ok": 0, "missing": 1, "unreadable": 0, "corrupt": 2, "too_short": 7}  # 16 < 20
    assert {p["problem"] for p in result["problems"]} == {"missing", "corrupt", "too_short"}
    clean = open(tmp_path / "clean.csv").read().splitlines()
    assert clean[0] == lines[0] and len(clean) == 8 and not set(victims) & set(clean)

    # the cleaned list passes
    code, result = run(capsys, "check-videos", "--config", CONFIG, "--json", "--annotation",
                       str(tmp_path / "clean.csv"), "DATA.PATH_TO_DATA_DIR", str(root))
    assert code == 0 and result["counts"] == {"ok": 7, "missing": 0, "unreadable": 0, "corrupt": 0, "too_short": 0}


def test_check_videos_text_and_usage_errors(tiny_synthetic, capsys):
    code, out = run(capsys, "check-videos", "--config", CONFIG, "--split", "val",
                    "DATA.PATH_TO_DATA_DIR", tiny_synthetic)
    assert code == 0 and "10 videos, 10 decodable, 0 missing, 0 corrupt" in out
    assert main(["check-videos", "--annotation", "/no/such/list.csv"]) == 2
    assert "annotation file not found" in capsys.readouterr().err


def test_make_synthetic_cli(tmp_path, capsys):
    code, result = run(capsys, "make-synthetic", str(tmp_path / "s"), "--classes", "3", "--per-class", "2,1,0",
                       "--frames", "8", "--size", "32x48", "--seed", "1", "--workers", "1", "--json")
    assert code == 0 and result["videos"] == {"train": 6, "val": 3, "test": 0}
    assert open(tmp_path / "s" / "train.csv").read().count("\n") == 7
    assert main(["make-synthetic", str(tmp_path / "t"), "--size", "33"]) == 2
