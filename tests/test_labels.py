"""Label maps and weight provenance: data/kinetics600/labels.txt is the published K600 order, the zoo's
K600 entries carry it, eval and infer use it, and an evaluation whose order is unknown says what it assumed.
The zoo's per-file checks are what `zoo.verification` and the docs say they are."""
import hashlib
import json
import os

import pytest
import torch

import videoats
from videoats import VideoATSError, zoo
from videoats.checkpoint import save_checkpoint
from videoats.cli import main
from videoats.data.synthetic import make_synthetic
from videoats.inference.predictor import load_predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K600 = os.path.join(ROOT, "data", "kinetics600", "labels.txt")
PACKAGED = os.path.join(os.path.dirname(videoats.__file__), "assets", "labels", "kinetics600.txt")
TINY_CONFIG = os.path.join(ROOT, "configs", "synthetic", "tiny_timesformer.yaml")
TS = "timesformer_tiny_8x32"
# the SHA-256 of DeepMind's kinetics-i3d data/label_map_600.txt, as data/kinetics600/README.md records it
# (the same bytes as mmaction2's label_map_k600.txt); an edit, a reordering or a lost newline changes it
DEEPMIND_SHA256 = "8dfca4202520ea8291ce0242ef33b006d0a0772b409663c090a2876bc1978dcf"


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_k600_labels_are_the_published_alphabetical_list():
    names = _lines(K600)
    assert len(names) == 600 and len(set(names)) == 600 and all(n == n.strip() and n for n in names)
    assert names == sorted(names)  # the order DeepMind, mmaction2 and the TimeSformer checkpoints use
    with open(K600, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == DEEPMIND_SHA256
    # the indices of the public conversion check on an archery clip (top-1 9) and of the SlowFast report
    assert (names[9], names[266], names[527], names[598]) == ("archery", "luge", "throwing axe", "yoga")
    readme = open(os.path.join(ROOT, "data", "kinetics600", "README.md"), encoding="utf-8").read()
    assert DEEPMIND_SHA256 in readme


def test_the_installed_copy_is_the_data_folder_list():
    """The package ships a copy (package data, so a wheel has it); it must not drift from data/."""
    with open(K600, "rb") as a, open(PACKAGED, "rb") as b:
        assert a.read() == b.read()


def test_zoo_k600_entries_carry_the_k600_order_or_say_it_is_unknown():
    names = _lines(K600)
    readme = open(os.path.join(ROOT, "data", "kinetics600", "README.md"), encoding="utf-8").read()
    k600 = [n for n in zoo.ZOO if "k600" in n]
    assert k600, "the zoo has no Kinetics-600 weights"
    for name in k600:
        if zoo.entry(name).labels:
            assert zoo.label_names(name) == names, name
        else:  # an unknown order must be said where users look it up, under the entry's name
            assert zoo.label_names(name) is None and f"`{name}`" in readme, name
    assert zoo.label_names("timesformer_8x224_k600") == names  # the official TimeSformer file is known
    for page in ("models.md", "evaluation.md"):  # where users look the class order up
        with open(os.path.join(ROOT, "docs", page), encoding="utf-8") as f:
            assert "data/kinetics600/labels.txt" in f.read(), page


def test_zoo_recognises_its_files_by_name_and_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.HOME_ENV, str(tmp_path))
    assert zoo.entry_for("zoo:timesformer_8x224_k600") == "timesformer_8x224_k600"
    assert zoo.entry_for(str(tmp_path / "TimeSformer_divST_8x32_224_K600.pyth")) == "timesformer_8x224_k600"
    assert zoo.entry_for(zoo.local_path("timesformer_hr_16x448_k600_hf")) == "timesformer_hr_16x448_k600_hf"
    assert zoo.entry_for(str(tmp_path / "my_finetuned.pyth")) is None
    assert zoo.entry_for("zoo:no_such_weights") is None


# ------------------------------------------------------------------------------------- provenance


def test_verification_says_what_is_checked_and_the_check_does_it(tmp_path, monkeypatch):
    """A stated sum is enforced on a cached file; a name's hash prefix likewise; otherwise the first sum seen."""
    monkeypatch.setenv(zoo.HOME_ENV, str(tmp_path))
    body = b"weights" * 1000
    good = hashlib.sha256(body).hexdigest()
    monkeypatch.setitem(zoo.ZOO, "stated", zoo.ZooEntry(TS, (("w.bin", "http://127.0.0.1:9/w.bin"),), "t",
                                                        sha256=(("w.bin", good),)))
    monkeypatch.setitem(zoo.ZOO, "stated_bad", zoo.ZooEntry(TS, (("w.bin", "http://127.0.0.1:9/w.bin"),), "t",
                                                            sha256=(("w.bin", "0" * 64),)))
    monkeypatch.setitem(zoo.ZOO, "prefixed", zoo.ZooEntry(TS, ((f"w-{good[:8]}.bin", "http://127.0.0.1:9/x"),), "t"))
    monkeypatch.setitem(zoo.ZOO, "first", zoo.ZooEntry(TS, (("w.bin", "http://127.0.0.1:9/w.bin"),), "t"))
    assert zoo.verification("stated") == {"w.bin": "the SHA-256 its publisher states"}
    assert zoo.verification("prefixed") == {f"w-{good[:8]}.bin": f"the SHA-256 prefix in its name ({good[:8]})"}
    assert zoo.verification("first") == {"w.bin": "none stated: the SHA-256 recorded on the first download"}
    for name in ("stated", "stated_bad", "prefixed", "first"):
        os.makedirs(zoo.folder(name))
        with open(zoo.local_path(name), "wb") as f:
            f.write(body)
    assert zoo.fetch("stated", progress=False) == zoo.local_path("stated")  # cached, no network
    assert zoo.fetch("prefixed", progress=False) == zoo.local_path("prefixed")
    with pytest.raises(VideoATSError, match="not 0000000000000000... .the SHA-256 its publisher states."):
        zoo.fetch("stated_bad", progress=False)
    zoo.fetch("first", progress=False)  # records the sum, then holds the file to it
    with open(zoo.local_path("first"), "ab") as f:
        f.write(b"!")
    with pytest.raises(VideoATSError, match="recorded on its first download"):
        zoo.fetch("first", progress=False)


def test_pinned_sums_are_full_sha256_of_files_the_entry_has():
    for name, e in zoo.ZOO.items():
        files = {f for f, _ in e.files}
        for file_name, digest in e.sha256:
            assert file_name in files and len(digest) == 64 and int(digest, 16) >= 0, name


# ------------------------------------------------------------------------- eval and infer use the map


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """A 5-class synthetic test split, a checkpoint without label names in the zoo cache under two entries:
    one whose label map is the split's order, one whose map is reversed."""
    monkeypatch.setenv(zoo.HOME_ENV, str(tmp_path / "home"))
    data = tmp_path / "syn"
    make_synthetic(str(data), num_classes=5, videos_per_class={"test": 1}, num_frames=16, size=32, seed=2)
    names = _lines(str(data / "labels.txt"))
    torch.manual_seed(0)
    model = videoats.create_model(TS, num_classes=5)
    for key, order in (("tiny_same", names), ("tiny_reversed", names[::-1])):
        (tmp_path / f"{key}.txt").write_text("\n".join(order) + "\n")
        monkeypatch.setitem(zoo.LABEL_MAPS, key, str(tmp_path / f"{key}.txt"))  # an absolute path joins as is
        monkeypatch.setitem(zoo.ZOO, key, zoo.ZooEntry(TS, (("w.pt", "http://127.0.0.1:9/w.pt"),), "t", labels=key))
        os.makedirs(zoo.folder(key))
        save_checkpoint(zoo.local_path(key), model)  # no label names inside
    plain = tmp_path / "plain.pt"
    save_checkpoint(str(plain), model)
    return data, names, plain


def _eval(data, checkpoint, out, capsys):
    code = main(["eval", "--config", TINY_CONFIG, "--checkpoint", checkpoint, "--output", str(out),
                 "DATA.PATH_TO_DATA_DIR", str(data), "MODEL.NUM_CLASSES", "5", "DATA.NUM_WORKERS", "0",
                 "DEVICE", "cpu", "--no-progress", "--json"])
    captured = capsys.readouterr()
    return code, captured


def test_eval_checks_the_dataset_against_the_zoo_order_and_says_an_assumed_one(tiny_zoo, tmp_path, capsys):
    data, names, plain = tiny_zoo
    code, got = _eval(data, "zoo:tiny_same", tmp_path / "same", capsys)
    assert code == 0, got.err
    assert json.loads(got.out)["label_order"]["source"] == "zoo"
    code, got = _eval(data, "zoo:tiny_reversed", tmp_path / "rev", capsys)
    assert code != 0 and "label order differs" in got.err and f"{names[0]!r} in the dataset" in got.err
    assert not (tmp_path / "rev" / "results.json").exists()
    code, got = _eval(data, str(plain), tmp_path / "plain", capsys)
    assert code == 0, got.err
    results = (tmp_path / "plain" / "results.json").read_text()
    doc = json.loads(results)
    assert doc["label_order"]["source"] == "assumed"
    assert doc["label_order"]["note"].endswith("the dataset's class order, DATA.LABELS_FILE (labels.txt)")
    assert results.count("assumed to follow") == 1  # said once, not per video
    summary = (tmp_path / "plain" / "summary.txt").read_text()
    assert summary.count("assumed to follow") == 1


def test_infer_prints_the_zoo_class_names(tiny_zoo):
    data, names, plain = tiny_zoo
    predictor = load_predictor(checkpoint="zoo:tiny_reversed")
    assert predictor.label_source == "zoo" and predictor.label_names == names[::-1]
    assert load_predictor(checkpoint=str(plain)).label_source == "indices"
