"""The synthetic benchmark: deterministic, balanced, readable by the same loaders."""
import csv
import os

import numpy as np

from videoats.config import load_config
from videoats.data import build_dataset, collate_views, read_frames
from videoats.data.synthetic import CLASS_NAMES, _scene, render_frames, make_synthetic

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic", "base.yaml")


def test_same_seed_same_files(tiny_synthetic, tmp_path):
    make_synthetic(str(tmp_path), num_classes=10, videos_per_class=(2, 1, 1), num_frames=16, size=(32, 40), seed=3)
    for name in ("train.csv", "val.csv", "test.csv", "labels.txt", "scenes.csv"):
        assert (tmp_path / name).read_text() == open(os.path.join(tiny_synthetic, name)).read()
    rows = list(csv.DictReader(open(tmp_path / "test.csv")))
    for row in rows[:3]:
        rel = os.path.join("test", row["label"], f"{row['youtube_id']}_{int(row['time_start']):06d}_"
                                                 f"{int(row['time_end']):06d}.mp4")
        a, _, _ = read_frames(str(tmp_path / rel), lambda n, fps: np.arange(n))
        b, _, _ = read_frames(os.path.join(tiny_synthetic, rel), lambda n, fps: np.arange(n))
        assert a.shape == (16, 32, 40, 3) and np.array_equal(a, b)


def test_another_seed_differs(tiny_synthetic, tmp_path):
    make_synthetic(str(tmp_path), num_classes=10, videos_per_class=(2, 1, 1), num_frames=16, size=(32, 40), seed=4)
    assert (tmp_path / "train.csv").read_text() != open(os.path.join(tiny_synthetic, "train.csv")).read()


def test_balanced_and_loaded_by_the_kinetics_reader(tiny_synthetic):
    cfg = load_config(CONFIG, ["DATA.PATH_TO_DATA_DIR", tiny_synthetic, "DATA.SAMPLING_RATE", "2",
                               "DATA.TRAIN_JITTER_SCALES", "[32, 36]", "DATA.TRAIN_CROP_SIZE", "32",
                               "DATA.TEST_CROP_SIZE", "32", "TEST.NUM_SPATIAL_CROPS", "3"])
    train = build_dataset(cfg, "train")
    assert train.label_names == sorted(CLASS_NAMES[:10])
    assert np.bincount([v.label for v in train.videos]).tolist() == [2] * 10
    assert all(os.path.isfile(v.path) for v in train.videos)
    test = build_dataset(cfg, "test")
    assert test.num_videos == 10 and test.views_per_video == 3
    batch = collate_views([test[i] for i in range(4)])
    assert batch["failed"] == [] and batch["video"].shape == (12, 3, 8, 32, 32)
    item = train[0]
    assert item["video"].shape == (3, 8, 32, 32)


def test_every_class_moves_and_translations_wrap():
    for name in CLASS_NAMES:
        scene = _scene(np.random.default_rng(0), name, 64, 64)
        frames = render_frames(scene, 32).astype(np.float32)
        assert frames.shape == (32, 64, 64, 3)
        change = max(np.abs(f - frames[0]).mean() for f in frames[1:])
        assert change > 1.0, name  # the class is in the motion, so something visibly changes
