"""The benchmark's complexity factors: they vary over wide ranges, and scenes.csv records what was rendered
(checked against the decoded pixels and against the scene's own numbers)."""
from __future__ import annotations

import csv
import glob
import os

import numpy as np
import pytest

from videoats.data.decoding import read_frames
from videoats.data.synthetic import MAX_OBJECTS, SIZE_RANGE, _scene, complexity, make_synthetic, render_frames


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    make_synthetic(str(out), num_classes=4, videos_per_class={"test": 6}, num_frames=8, size=48, seed=5)
    with open(out / "scenes.csv", newline="") as f:
        return str(out), list(csv.DictReader(f))


def test_factors_span_their_ranges():
    rng = np.random.default_rng(0)
    scenes = [_scene(rng, "moving left", 64, 64) for _ in range(200)]
    counts = [len(s["objects"]) for s in scenes]
    assert set(counts) == set(range(1, MAX_OBJECTS + 1))
    radii = np.array([np.mean([o["radius"] for o in s["objects"]]) for s in scenes]) / 64
    assert radii.min() >= SIZE_RANGE[0] * 0.9 and radii.max() <= SIZE_RANGE[1] * 1.1
    assert radii.max() / radii.min() > 2.5  # a wide range, not a jitter around one size
    assert {s["background"] == "flat" for s in scenes} == {True, False}
    assert {len(s["distractors"]) for s in scenes} == {0, 1, 2, 3}


def test_every_object_is_drawn():
    """On a flat background with no distractors, each extra object covers more pixels."""
    scene = next(s for s in (_scene(np.random.default_rng(i), "rotating clockwise", 64, 64) for i in range(100))
                 if len(s["objects"]) == 3)
    scene.update(background="flat", distractors=[])
    covered = []
    for n in (1, 2, 3):
        frame = render_frames(dict(scene, objects=scene["objects"][:n]), 4)[0].astype(int)
        covered.append(int((np.abs(frame - frame[0, 0]).sum(axis=-1) > 0).sum()))
    assert covered[0] < covered[1] < covered[2]


def test_recorded_factors_match_the_scene_and_the_decoded_pixels(bench):
    folder, rows = bench
    assert len(rows) == 24
    for row in rows:
        (path,) = glob.glob(os.path.join(folder, "test", row["label"], row["name"]))
        frames, _, _ = read_frames(path, lambda n, fps: np.arange(n), timeout=30)
        # measured independently from what decodes (the clips are lossless): pixels that ever differ from frame 0
        moved = (np.abs(frames.astype(int) - frames[:1].astype(int)) > 8).any(axis=(0, 3)).mean()
        assert float(row["moving_pixels"]) == pytest.approx(moved, abs=1e-4)
        assert int(row["textured"]) == (row["background"] != "flat")
        assert 1 <= int(row["objects"]) <= MAX_OBJECTS
        assert int(row["moving_distractors"]) <= int(row["distractors"]) <= 3


def test_object_area_by_hand():
    scene = {"height": 40, "width": 50, "background": "flat", "distractors": [],
             "objects": [{"radius": 4.0}, {"radius": 6.0}]}
    got = complexity(scene, 0.25)
    assert got["object_area"] == pytest.approx(round(np.pi * (16 + 36) / 2000, 4))
    assert (got["objects"], got["object_radius"], got["textured"], got["moving_pixels"]) == (2, 5.0, 0, 0.25)
