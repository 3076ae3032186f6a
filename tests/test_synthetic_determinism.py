"""`make-synthetic` with one seed gives the same decoded frames every time, whatever the worker count (issue #15).

Frames are compared after decoding with the loader's own decoder, which is what training and the demo see;
they must also equal the rendered frames exactly (the clips are stored losslessly).
"""
import glob
import os

import numpy as np

from videoats.cli import main
from videoats.data.decoding import read_frames
from videoats.data.synthetic import _plan, _scene, render_frames


def decoded(folder):
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*", "*", "*.mp4"))):
        frames, _, _ = read_frames(path, lambda n, fps: np.arange(n), timeout=30)
        out[os.path.relpath(path, folder)] = frames
    return out


def test_same_seed_same_decoded_frames(tmp_path, capsys):
    args = ["--classes", "4", "--per-class", "2,1,1", "--frames", "12", "--size", "32x48", "--seed", "7"]
    assert main(["make-synthetic", str(tmp_path / "a"), "--workers", "2", *args]) == 0
    assert main(["make-synthetic", str(tmp_path / "b"), "--workers", "1", *args]) == 0
    a, b = decoded(str(tmp_path / "a")), decoded(str(tmp_path / "b"))
    assert len(a) == 16 and sorted(a) == sorted(b)
    for name in a:
        assert a[name].shape == (12, 32, 48, 3) and a[name].tobytes() == b[name].tobytes(), name
    # lossless: what decodes is exactly what was rendered from the clip's own seed
    job = next(j for j in _plan(4, {"train": 2, "val": 1, "test": 1}, 7) if j["split"] == "test")
    scene = _scene(np.random.default_rng(job["scene_seed"]), job["label"], 32, 48)
    name = next(n for n in a if n.startswith("test") and job["youtube_id"] in n)
    assert np.array_equal(a[name], render_frames(scene, 12))


def test_make_synthetic_refuses_bad_frame_rates(tmp_path, capsys):
    for fps in ("-5", "0"):
        assert main(["make-synthetic", str(tmp_path / "s"), "--fps", fps]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--fps) must be a whole number of at least 1, got {fps}" in err
    assert not (tmp_path / "s").exists()
