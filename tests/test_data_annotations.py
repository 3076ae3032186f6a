"""The three annotation layouts, with spaces in paths and labels, and the config wiring."""
import os

import pytest

from videoats.config import get_cfg
from videoats.data import build_dataset, detect_format, read_annotation, write_annotation
from videoats.errors import VideoATSError


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return str(path)


def test_kinetics_csv_flat_per_class_and_split_folders(tmp_path):
    root = tmp_path / "k600"
    touch(root / "passing American football (in game)" / "abc_000004_000014.mp4")  # per class, as written
    touch(root / "jumping_into_pool" / "d-f_000010_000020.mp4")  # per class, spaces as underscores
    touch(root / "xyz_000001_000011.mkv")  # flat, another container
    touch(root / "val" / "abseiling" / "q1_000000_000010.mp4")  # split folder
    csv_text = ('label,youtube_id,time_start,time_end,split\n'
                '"passing American football (in game)",abc,4,14,val\n'
                'jumping into pool,d-f,10,20,val\n'
                '"say ""hi"", wave",xyz,1,11,val\n'
                'abseiling,q1,0,10,val\n'
                'abseiling,gone,0,10,val\n')
    (root / "val.csv").write_text(csv_text)
    ann = read_annotation(str(root / "val.csv"), split="val")
    assert ann.format == "kinetics_csv"
    assert ann.label_names == sorted(["passing American football (in game)", "jumping into pool",
                                      'say "hi", wave', "abseiling"])
    paths = [r.path for r in ann.records]
    assert all(os.path.isfile(p) for p in paths[:4]) and not os.path.exists(paths[4])
    assert [r.label_name for r in ann.records][2] == 'say "hi", wave'
    assert [r.label for r in ann.records] == [2, 1, 3, 0, 0]


def test_kinetics_csv_without_labels_and_with_a_labels_file(tmp_path):
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\nabc,0,10,test\n")
    ann = read_annotation(str(tmp_path / "test.csv"))
    assert [r.label for r in ann.records] == [-1]
    (tmp_path / "labels.txt").write_text("zumba\nabseiling\n")
    (tmp_path / "v.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,a,0,10,val\n")
    ann = read_annotation(str(tmp_path / "v.csv"), labels_file=str(tmp_path / "labels.txt"))
    assert ann.label_names == ["zumba", "abseiling"] and ann.records[0].label == 1
    (tmp_path / "w.csv").write_text("label,youtube_id,time_start,time_end,split\nyoga,a,0,10,val\n")
    with pytest.raises(VideoATSError, match="yoga"):
        read_annotation(str(tmp_path / "w.csv"), labels_file=str(tmp_path / "labels.txt"))


def test_path_label_space_separated_with_spaces_in_paths(tmp_path):
    (tmp_path / "train.csv").write_text("my videos/clip one.mp4 2\nother/b.mp4 0\n\n")
    ann = read_annotation(str(tmp_path / "train.csv"), prefix="/data")
    assert ann.format == "path_label"
    assert [(r.path, r.label) for r in ann.records] == [("/data/my videos/clip one.mp4", 2), ("/data/other/b.mp4", 0)]
    assert ann.label_names == ["0", "1", "2"]


def test_path_label_comma_separated_with_names(tmp_path):
    (tmp_path / "list.txt").write_text("a dir/x, y.mp4,playing guitar\n/abs/z.mp4,abseiling\n")
    ann = read_annotation(str(tmp_path / "list.txt"), fmt="path_label", prefix=str(tmp_path))
    assert [(r.path, r.label_name, r.label) for r in ann.records] == [
        (str(tmp_path / "a dir/x, y.mp4"), "playing guitar", 1), ("/abs/z.mp4", "abseiling", 0)]


def test_class_folders(tmp_path):
    touch(tmp_path / "tree" / "b class" / "one.mp4")
    touch(tmp_path / "tree" / "a class" / "two words.webm")
    touch(tmp_path / "tree" / "a class" / "notes.txt")
    ann = read_annotation(str(tmp_path / "tree"))
    assert ann.format == "folders" and ann.label_names == ["a class", "b class"]
    assert [(os.path.basename(r.path), r.label) for r in ann.records] == [("two words.webm", 0), ("one.mp4", 1)]
    out = write_annotation(ann, ann.records[1:], str(tmp_path / "clean.txt"))
    again = read_annotation(out)
    assert again.format == "path_label" and [r.label_name for r in again.records] == ["b class"]


def test_detect_format_and_cleaned_copy_keeps_the_format(tmp_path):
    (tmp_path / "k.csv").write_text('label,youtube_id,time_start,time_end,split\n"a b",x,0,10,train\nc,y,0,10,train\n')
    (tmp_path / "p.csv").write_text("x.mp4 1\n")
    assert detect_format(str(tmp_path / "k.csv")) == "kinetics_csv"
    assert detect_format(str(tmp_path / "p.csv")) == "path_label"
    ann = read_annotation(str(tmp_path / "k.csv"))
    write_annotation(ann, ann.records[:1], str(tmp_path / "k.csv"))  # in place, atomically
    assert (tmp_path / "k.csv").read_text() == 'label,youtube_id,time_start,time_end,split\n"a b",x,0,10,train\n'
    assert sorted(os.listdir(tmp_path)) == ["k.csv", "p.csv"]  # no temp file left


def test_build_dataset_from_config(tmp_path):
    touch(tmp_path / "clips" / "a.mp4")
    (tmp_path / "train.csv").write_text("a.mp4 0\n")
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = str(tmp_path)
    cfg.DATA.PATH_PREFIX = "clips"
    ds = build_dataset(cfg, "train")
    assert ds.num_videos == 1 and ds.videos[0].path == str(tmp_path / "clips" / "a.mp4")
    with pytest.raises(VideoATSError, match="not found"):
        build_dataset(cfg, "val")
    with pytest.raises(VideoATSError, match="split"):
        build_dataset(cfg, "dev")
