"""`score` means one thing everywhere: a probability, with the ranked aggregate beside it. eval's
predictions.jsonl and infer --json must give the same numbers for the same video, model and views. Also what
eval does without being told: no --output keeps earlier results, no --config takes the checkpoint's own; and a
cut Matroska download is corrupt in eval as everywhere."""
from __future__ import annotations

import json
import os

import pytest
import torch

from videoats.cli import main
from videoats.evaluation import metrics as M

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "synthetic",
                      "tiny_timesformer.yaml")


@pytest.mark.parametrize("method", ["sum_logits", "mean_softmax", "max_logits"])
def test_probabilities_by_hand(method):
    views = torch.tensor([[1.0, 0.0, -1.0], [3.0, 0.0, 1.0]], dtype=torch.float64)
    agg = M.aggregate(views, method)
    probs = M.probabilities(agg, method, 2)
    expected = {"sum_logits": torch.tensor([2.0, 0.0, 0.0]).softmax(-1),  # the mean logit (4, 0, 0) / 2
                "mean_softmax": (views.softmax(-1)[0] + views.softmax(-1)[1]) / 2,
                "max_logits": torch.tensor([3.0, 0.0, 1.0]).softmax(-1)}[method]
    assert torch.allclose(probs, expected.double(), atol=1e-12) and float(probs.sum()) == pytest.approx(1.0)
    assert probs.argmax() == agg.argmax()


def test_eval_predictions_and_infer_report_the_same_score(tiny_synthetic, tmp_path, capsys):
    torch.manual_seed(0)
    import videoats
    from videoats.checkpoint import save_checkpoint
    from videoats.config import load_config

    cfg = load_config(CONFIG, ["MODEL.NUM_CLASSES", "10"])
    model = videoats.create_model(cfg.MODEL.NAME, num_classes=10)
    ckpt = str(tmp_path / "m.safetensors")
    save_checkpoint(ckpt, model, config=cfg)
    views = ["TEST.NUM_ENSEMBLE_VIEWS", "2", "TEST.NUM_SPATIAL_CROPS", "3"]
    code = main(["eval", "--config", CONFIG, "--checkpoint", ckpt, "--output", str(tmp_path / "ev"), "--json",
                 "--no-progress", "DATA.PATH_TO_DATA_DIR", tiny_synthetic, "DATA.NUM_WORKERS", "0",
                 "MODEL.NUM_CLASSES", "10", *views])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    with open(result["files"]["predictions"]) as f:
        first = json.loads(f.readline())
    code = main(["infer", first["path"], "--checkpoint", ckpt, "--topk", "5", "--json", *views])
    answer = json.loads(capsys.readouterr().out)["results"][0]
    assert code == 0 and answer["views"] == first["views"] == 6
    assert [t["index"] for t in answer["topk"]] == [t["index"] for t in first["top5"]]
    for key in ("score", "aggregate"):
        assert [t[key] for t in answer["topk"]] == pytest.approx([t[key] for t in first["top5"]], abs=1e-4)
    assert 0 < sum(t["score"] for t in first["top5"]) <= 1 + 1e-6


def test_eval_without_output_keeps_the_earlier_results(tiny_synthetic, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["eval", "--config", CONFIG, "--json", "--no-progress", "DATA.PATH_TO_DATA_DIR", tiny_synthetic,
            "DATA.NUM_WORKERS", "0", "MODEL.NUM_CLASSES", "10", "TEST.NUM_SPATIAL_CROPS", "1",
            "OUTPUT_DIR", str(out)]
    written = []
    for _ in range(3):
        assert main(args) == 0
        result = json.loads(capsys.readouterr().out)
        written.append(os.path.dirname(result["files"]["results"]))
    assert written == [str(out), str(out / "eval-2"), str(out / "eval-3")]
    assert all(os.path.isfile(os.path.join(w, "results.json")) for w in written)


def test_eval_without_config_uses_the_checkpoints_own(tiny_synthetic, tmp_path, capsys):
    import videoats
    from videoats.checkpoint import save_checkpoint
    from videoats.config import load_config

    torch.manual_seed(1)
    stored = ["MODEL.NUM_CLASSES", "10", "TEST.NUM_SPATIAL_CROPS", "1", "DATA.NUM_FRAMES", "4"]
    cfg = load_config(CONFIG, stored)
    ckpt = str(tmp_path / "m.safetensors")
    save_checkpoint(ckpt, videoats.create_model(cfg.MODEL.NAME, num_classes=10), config=cfg)
    common = ["--checkpoint", ckpt, "--json", "--no-progress", "DATA.PATH_TO_DATA_DIR", tiny_synthetic,
              "DATA.NUM_WORKERS", "0"]
    assert main(["eval", "--config", CONFIG, *stored, "--output", str(tmp_path / "a"), *common]) == 0
    with_file = json.loads(capsys.readouterr().out)
    assert main(["eval", "--output", str(tmp_path / "b"), *common]) == 0
    stored_run = json.loads(capsys.readouterr().out)
    assert stored_run["metrics"] == with_file["metrics"] and stored_run["coverage"] == with_file["coverage"]
    assert stored_run["config_file"] == f"stored in {ckpt}"
    plain = str(tmp_path / "w.pth")
    torch.save(videoats.create_model(cfg.MODEL.NAME, num_classes=10).state_dict(), plain)
    assert main(["eval", "--checkpoint", plain, "DATA.PATH_TO_DATA_DIR", tiny_synthetic]) == 2
    assert "stores no config: give --config FILE" in capsys.readouterr().err


def test_eval_counts_a_cut_matroska_download_as_corrupt(tiny_synthetic, tmp_path, capsys):
    """A cut MKV (Matroska keeps stating its full duration) is refused by eval as by infer and check-videos."""
    import shutil

    import av

    from videoats.config import load_config
    from videoats.data import build_dataset

    data = tmp_path / "data"
    shutil.copytree(tiny_synthetic, data)
    cfg = load_config(CONFIG, ["DATA.PATH_TO_DATA_DIR", str(data), "MODEL.NUM_CLASSES", "10"])
    victim = build_dataset(cfg, "test").videos[2].path
    remuxed = str(tmp_path / "remuxed.mkv")
    with av.open(victim) as src, av.open(remuxed, "w", format="matroska") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    whole = open(remuxed, "rb").read()
    with open(victim, "wb") as f:  # the name the annotation gives it; FFmpeg goes by the content
        f.write(whole[: len(whole) * 6 // 10])
    code = main(["eval", "--config", CONFIG, "--json", "--no-progress", "--output", str(tmp_path / "out"),
                 "DATA.PATH_TO_DATA_DIR", str(data), "DATA.NUM_WORKERS", "0", "MODEL.NUM_CLASSES", "10",
                 "TEST.NUM_SPATIAL_CROPS", "1"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    corrupt = result["coverage"]["corrupt"]
    assert [c["path"] for c in corrupt] == [victim] and "container says" in json.dumps(corrupt)
