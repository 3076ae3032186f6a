"""Image evaluation: `videoats eval` on an ImageNet-style folder of real photographs (matplotlib's sample
images), with the model's published test transform re-stated by hand, top-1/top-5, and per-image GFLOPs."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import videoats
from videoats.checkpoint import save_checkpoint
from videoats.cli import main as cli_main
from videoats.data.images import apply_test_transform, scan_images
from videoats.models.registry import family_of_name

from test_ats import peaky

SAMPLES = os.path.join(__import__("matplotlib").get_data_path(), "sample_data")
PHOTOS = {"person": ["grace_hopper.jpg"], "object": ["Minduka_Present_Blue_Pack.png", "logo2.png"]}


def test_transform_by_hand():
    """Grace Hopper (512 x 600, W x H) through CvT-224's transform: short side 256 (bicubic), so 256 x 300, then
    the centre 224 crop at rows 38..261 and columns 16..239, /255 and ImageNet mean/std; re-stated with PIL and
    numpy, and the 384 transform (no crop) as a plain 384 x 384 resize."""
    image = Image.open(os.path.join(SAMPLES, "grace_hopper.jpg"))
    assert image.size == (512, 600)
    family = family_of_name("cvt_21_224")
    transform = family.image_transform(224)
    assert (transform.resize, transform.size, transform.interpolation) == (256, 224, "bicubic")
    got = apply_test_transform(image, transform, family.mean, family.std)
    resized = np.asarray(image.convert("RGB").resize((256, 300), Image.BICUBIC), dtype=np.float32) / 255.0
    crop = resized[38:262, 16:240]
    expected = (crop - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert got.shape == (3, 224, 224)
    assert np.abs(got.permute(1, 2, 0).numpy() - expected).max() < 1e-5
    whole = apply_test_transform(image, family.image_transform(384), (0, 0, 0), (1, 1, 1))
    plain = np.asarray(image.convert("RGB").resize((384, 384), Image.BICUBIC), dtype=np.float32) / 255.0
    assert np.abs(whole.permute(1, 2, 0).numpy() - plain).max() < 1e-6


@pytest.fixture
def folder(tmp_path):
    for cls, files in PHOTOS.items():
        os.makedirs(tmp_path / "val" / cls)
        for f in files:
            shutil.copy(os.path.join(SAMPLES, f), tmp_path / "val" / cls / f)
    return tmp_path


def test_flat_folder_with_a_labels_list_reads_as_the_class_folders(folder, tmp_path):
    nested, names = scan_images(str(folder / "val"), "")
    flat = tmp_path / "flat"
    os.makedirs(flat / "val")
    lines = []
    for path, label in nested:
        shutil.copy(path, flat / "val" / os.path.basename(path))
        lines.append(f"{os.path.basename(path)} {names[label]}")
    (flat / "val.txt").write_text("\n".join(lines) + "\n")
    items, flat_names = scan_images(str(flat / "val"), str(flat / "val.txt"))
    assert flat_names == names == ["object", "person"]
    assert [(os.path.basename(p), l) for p, l in items] == [(os.path.basename(p), l) for p, l in nested]
    # and through `eval` with a shipped ImageNet config (its labels list is the val split's annotation)
    torch.manual_seed(0)
    ckpt = tmp_path / "cvt.safetensors"
    save_checkpoint(ckpt, peaky(videoats.create_model("cvt_tiny_96", num_classes=2).eval()))
    answers = []
    for root in (folder, flat):
        out = tmp_path / f"out_{root.name}"
        assert cli_main(["eval", "--config", "configs/imagenet/cvt_21_384.yaml", "--checkpoint", str(ckpt),
                         "--output", str(out), "--json", "MODEL.NAME", "cvt_tiny_96", "MODEL.NUM_CLASSES", "2",
                         "DATA.PATH_TO_DATA_DIR", str(root), "DATA.TEST_CROP_SIZE", "96",
                         "DATA.NUM_WORKERS", "0"]) == 0
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        answers.append(sorted((os.path.basename(r["path"]), r["label"], r["top5"][0]["index"]) for r in rows))
    assert answers[0] == answers[1] and len(answers[0]) == 3


def test_eval_on_photographs_end_to_end(folder, tmp_path):
    """The model's own logits on the hand-transformed images decide the expected top-1 (a transform or label
    order that differs from the hand one moves it); the results file has the video evaluation's layout, with
    per-image GFLOPs under ATS below the dense count."""
    torch.manual_seed(0)
    model = videoats.create_model("cvt_tiny_96", num_classes=2).eval()
    ckpt = tmp_path / "cvt.safetensors"
    save_checkpoint(ckpt, model)
    family = family_of_name("cvt_tiny_96")
    items, names = scan_images(str(folder / "val"), "")
    x = torch.stack([apply_test_transform(Image.open(p), family.image_transform(96), family.mean, family.std)
                     for p, _ in items])
    with torch.no_grad():
        expected = (model(x).argmax(dim=1) == torch.tensor([l for _, l in items])).float().mean().item() * 100
    (folder / "val" / "person" / "truncated.jpg").write_bytes(b"\xff\xd8 not a whole jpeg")
    out = tmp_path / "out"
    rc = cli_main(["eval", "--config", "configs/imagenet/cvt_21_384_ats.yaml", "--checkpoint", str(ckpt),
                   "--output", str(out), "--json", "MODEL.NAME", "cvt_tiny_96", "MODEL.NUM_CLASSES", "2",
                   "DATA.PATH_TO_DATA_DIR", str(folder), "DATA.TEST_CROP_SIZE", "96", "ATS.BLOCKS", "[1, 2, 3]",
                   "ATS.TOKENS", "[0.5]", "DATA.NUM_WORKERS", "0"])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    # an unreadable image is reported, never replaced or silently skipped
    coverage = doc["coverage"]
    assert (coverage["evaluated_videos"], coverage["expected_videos"], coverage["complete"]) == (3, 4, False)
    assert coverage["by_reason"] == {"unreadable image": 1}
    assert doc["metrics"]["video"]["top1"] == pytest.approx(expected, abs=1e-3)
    assert doc["metrics"]["video"]["top5"] == pytest.approx(100.0)
    # the transform used is recorded, with the family's normalisation (not the config's video default)
    assert doc["protocol"]["image_transform"] == dict(size=96, resize=109, crop_fraction=0.875,
                                                      interpolation="bicubic", mean=[0.485, 0.456, 0.406],
                                                      std=[0.229, 0.224, 0.225])
    assert "3 of 4 images" in (out / "summary.txt").read_text()
    adaptive = doc["gflops"]["adaptive"]
    dense = videoats.flops.analytic_gflops(model)
    assert adaptive["per_view"]["min"] <= adaptive["per_view"]["mean"] <= adaptive["per_view"]["max"] < dense


def test_folders_named_otherwise_than_the_checkpoints_classes_match_by_index(folder, tmp_path):
    """ImageNet's folders are WordNet ids while published checkpoints name classes ("tench, Tinca tinca"): the
    sorted folders are the class indices (ImageFolder's convention), said in the results file; folders that
    do use the checkpoint's names in another order are still refused."""
    model = videoats.create_model("cvt_tiny_96", num_classes=2).eval()
    args = ["--config", "configs/imagenet/cvt_21_384.yaml", "--json", "MODEL.NAME", "cvt_tiny_96",
            "MODEL.NUM_CLASSES", "2", "DATA.PATH_TO_DATA_DIR", str(folder), "DATA.TEST_CROP_SIZE", "96",
            "DATA.NUM_WORKERS", "0"]
    save_checkpoint(tmp_path / "named.safetensors", model, label_names=["tabby cat", "tench"])
    rc = cli_main(["eval", *args, "--checkpoint", str(tmp_path / "named.safetensors"), "--output", str(tmp_path / "a")])
    assert rc == 0
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert doc["label_order"]["source"] == "index" and "'object'" in doc["label_order"]["note"]
    save_checkpoint(tmp_path / "swapped.safetensors", model, label_names=["person", "object"])
    assert cli_main(["eval", *args, "--checkpoint", str(tmp_path / "swapped.safetensors"),
                     "--output", str(tmp_path / "b")]) != 0


def test_images_in_subfolders_count_and_a_decompression_bomb_is_an_unreadable_image(tmp_path):
    """Class folders are walked as ImageFolder walks them; an image PIL refuses to decode (too many pixels) is
    reported for that image, not raised for the whole evaluation."""
    from videoats.data.images import ImageFolderDataset, ImageTransform

    os.makedirs(tmp_path / "val" / "a" / "nested")
    os.makedirs(tmp_path / "val" / "b")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "val" / "a" / "nested" / "deep.png")
    Image.new("1", (13500, 13500)).save(tmp_path / "val" / "b" / "bomb.png")  # small file, 182 M pixels
    items, names = scan_images(str(tmp_path / "val"), "")
    assert [(os.path.relpath(p, tmp_path), label) for p, label in items] == [
        (os.path.join("val", "a", "nested", "deep.png"), 0), (os.path.join("val", "b", "bomb.png"), 1)]
    data = ImageFolderDataset(items, names, ImageTransform(32, 0.875, "bicubic"), (0.5,) * 3, (0.5,) * 3)
    assert data[0]["video"].shape[-2:] == (32, 32) and not data[0].get("failed")
    assert data[1]["failed"]["reason"] == "unreadable image"
