"""`videoats plot` and the token picture: tiny GFLOPs keep their digits, every run has its own legend label,
results from different test sets are flagged, and a one-stage token grid shows its whole title."""
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from videoats.cli import main
from videoats.evaluation.plots import point_labels
from videoats.inference.visualize import TEXT, label_font, render_token_grid

TINY = "timesformer_tiny_8x32"


def results(folder, label=TINY, ats=None, checkpoint=None, gflops=0.0401, top1=47.5, split="test",
            annotation="/data/syn/test.csv", views="1x1"):
    """The fields of a `videoats eval` results.json that `plot` reads."""
    os.makedirs(folder, exist_ok=True)
    doc = {"model": {"name": TINY, "label": label, "ats": ats}, "checkpoint": checkpoint, "split": split,
           "annotation": annotation, "protocol": {"views": views}, "metrics": {"video": {"top1": top1}},
           "gflops": {"total": gflops}, "config": {"DATA": {"PATH_TO_DATA_DIR": os.path.dirname(annotation)}}}
    path = os.path.join(folder, "results.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def plot(capsys, *paths, json_out=True):
    code = main(["plot", *map(str, paths), "--output", str(os.path.join(os.path.dirname(paths[0]), "p.png"))]
                + (["--json"] if json_out else []))
    out = capsys.readouterr()
    return code, (json.loads(out.out) if json_out else out.out), out.err


def test_labels_tell_runs_apart(tmp_path, capsys):
    ats = {"variant": "tube", "blocks": [0], "tokens": 7}
    paths = [results(tmp_path / "dense_random"),
             results(tmp_path / "dense", checkpoint="/ckpt/a/best.pt"),
             results(tmp_path / "ats", label=f"{TINY} + ATS tube b0 k7", ats=ats, checkpoint="/ckpt/b/best.pt"),
             results(tmp_path / "ats_old", ats=ats, checkpoint="/ckpt/b/best.pt"),  # an older file: name only
             results(tmp_path / "again", checkpoint="/ckpt/a/best.pt")]
    code, res, err = plot(capsys, *paths)
    assert code == 0 and err == ""
    assert [p["label"] for p in res["points"]] == [
        f"{TINY}, random weights [1x1]",
        f"{TINY}, a/best.pt [1x1] (dense)",
        f"{TINY} + ATS tube b0 k7, b/best.pt [1x1]",
        f"{TINY} + ATS tube k7, b/best.pt [1x1]",
        f"{TINY}, a/best.pt [1x1] (again)",
    ]
    # the same file twice still gives two labels
    assert point_labels([dict(json.load(open(paths[0])), _path=paths[0])] * 2) == [
        f"{TINY}, random weights [1x1] (dense_random) #1", f"{TINY}, random weights [1x1] (dense_random) #2"]


def test_tiny_gflops_keep_significant_digits(tmp_path, capsys):
    a = results(tmp_path / "a", gflops=0.0401, checkpoint="/c/x.pt")
    b = results(tmp_path / "b", gflops=5113.0, top1=82.4, checkpoint="/c/y.pt")
    code, text, err = plot(capsys, a, b, json_out=False)
    assert code == 0 and err == ""
    rows = [line for line in text.splitlines() if line[:2] in ("1.", "2.")]
    assert rows[0].split()[-2:] == ["0.0401", "47.50%"]
    assert rows[1].split()[-2:] == ["5,113.00", "82.40%"]


def test_results_from_different_test_sets_warn_once(tmp_path, capsys):
    a = results(tmp_path / "a", checkpoint="/c/x.pt")
    b = results(tmp_path / "b", checkpoint="/c/x.pt", split="val")
    c = results(tmp_path / "c", checkpoint="/c/x.pt", annotation="/data/other/test.csv")
    code, res, err = plot(capsys, a, b, c)
    lines = err.splitlines()
    assert code == 0 and len(lines) == 1 and res["warnings"] == [lines[0][len("videoats plot: warning: "):]]
    assert lines[0].startswith("videoats plot: warning: the results come from 3 different test sets, so their "
                               "top-1 values do not compare (split 'test' of /data/syn/test.csv: ")
    assert "split 'val' of /data/syn/test.csv" in lines[0] and "split 'test' of /data/other/test.csv" in lines[0]
    code, res, err = plot(capsys, a, results(tmp_path / "d", checkpoint="/c/z.pt"))
    assert code == 0 and err == "" and res["warnings"] == []


def _ink(image):
    """Pixels that are not the white background."""
    return int((np.asarray(image.convert("L")) < 250).sum())


def test_one_stage_grid_shows_the_whole_title(tmp_path):
    frames = np.full((2, 32, 32, 3), 128, np.uint8)
    masks = {3: np.ones((2, 16), bool)}
    title = "a_video_with_a_rather_long_name.mp4: timesformer_tiny_8x32 + ATS tube b3 k7"
    with_title = render_token_grid(frames, masks, 8, str(tmp_path / "t.png"), title=title)
    without = render_token_grid(frames, masks, 8, str(tmp_path / "n.png"))
    # the title alone on a wide canvas, drawn as the grid draws it: all of its pixels must be in the grid
    alone = Image.new("RGB", (4000, 200), "white")
    ImageDraw.Draw(alone).text((6, 6), title, fill=TEXT, font=label_font())
    title_ink = _ink(alone)
    assert title_ink > 0 and np.nonzero(np.asarray(alone.convert("L")) < 250)[1].max() < 1000  # all of it there
    shown = _ink(Image.open(with_title["path"])) - _ink(Image.open(without["path"]))
    assert shown == title_ink
    assert with_title["cols"] == 2 and with_title["width"] > without["width"]  # the title sets the width
