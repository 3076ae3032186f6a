"""`videoats compare`: the paired differences by hand, and the command end to end on a tiny benchmark (every
point, the fine-tunes with their own selection, the paired counts recounted from each evaluation's files)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import videoats
from videoats.cli import main
from videoats.comparison import _identity, code_digest, paired_rows, plot
from videoats.config import load_config
from videoats.data.synthetic import make_synthetic

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic", "benchmark_ats.yaml")


def _p(method, budget, seed, top1, gflops, correct, stage="off-the-shelf"):
    return dict(method=method, stage=stage, budget=budget, seed=seed, top1=top1, gflops_mean=gflops,
                correct=np.array(correct, dtype=bool))


def test_paired_rows_by_hand():
    points = [
        _p("inverse_transform", 0.3, 0, 50.0, 0.09, [1, 1, 0, 0]),
        _p("inverse_transform", 0.5, 0, 75.0, 0.10, [1, 1, 1, 0]),
        _p("top_k", 0.3, 0, 25.0, 0.08, [1, 0, 0, 0]),
        _p("top_k", 0.5, 0, 50.0, 0.12, [1, 0, 0, 1]),
        # random: off the shelf both seeds pair with ATS's only seed
        _p("random", 0.3, 0, 25.0, 0.09, [0, 0, 0, 1]),
        _p("random", 0.5, 0, 50.0, 0.11, [0, 0, 1, 1]),
        _p("random", 0.3, 1, 0.0, 0.09, [0, 0, 0, 0]),
        _p("random", 0.5, 1, 0.0, 0.11, [0, 0, 0, 0]),
    ]
    rows = {r["budget"]: r for r in paired_rows(points, "inverse_transform", ["inverse_transform", "top_k", "random"])}

    def pairs(budget, method):
        return [(p["seed"], p["reference_only"], p["other_only"], p["difference_at_reference_gflops"],
                 p["difference_at_other_gflops"]) for p in rows[budget][method]["pairs"]]

    # budget 0.5. top-k: ATS alone right on clips 1, 2, top-k alone on clip 3; at ATS's 0.10 GFLOPs top-k's curve
    # is half way from (0.08, 25) to (0.12, 50): 37.5, so ATS leads by 37.5; top-k's 0.12 is beyond ATS's curve
    assert pairs(0.5, "top_k") == [(0, 2, 1, 37.5, None)]
    # random seed 0 reads 37.5 half way from 0.09 to 0.11 (ATS +37.5), seed 1 reads 0 (ATS +75)
    assert pairs(0.5, "random") == [(0, 2, 1, 37.5, None), (1, 3, 0, 75.0, None)]
    assert rows[0.5]["random"]["difference"] == dict(mean=56.25, min=37.5, max=75.0, n=2)
    # budget 0.3: top-k's curve at 0.09 is a quarter of the way: 31.25 (ATS +18.75); its 0.08 is below ATS's curve.
    # random's points sit at ATS's 0.09, where ATS's curve reads 50: +25 and +50 both ways
    assert pairs(0.3, "top_k") == [(0, 1, 0, 18.75, None)]
    assert pairs(0.3, "random") == [(0, 2, 1, 25.0, 25.0), (1, 2, 0, 50.0, 50.0)]
    assert rows[0.3]["random"]["difference_at_other"] == dict(mean=37.5, min=25.0, max=50.0, n=2)
    assert rows[0.3]["top_k"]["difference_at_other"] == dict(mean=None, min=None, max=None, n=0)


def test_a_fine_tuned_seed_pairs_with_the_same_seed():
    points = [_p("inverse_transform", 0.5, s, 50.0 + s, 0.1, [s, 1], "fine-tuned") for s in (0, 1)]
    points += [_p("evit", 0.5, s, 50.0, 0.1, [1, 1 - s], "fine-tuned") for s in (0, 1)]
    pairs = paired_rows(points, "inverse_transform", ["inverse_transform", "evit"])[0]["evit"]["pairs"]
    assert [(p["seed"], p["reference_only"], p["other_only"]) for p in pairs] == [(0, 0, 1), (1, 1, 0)]
    assert [p["difference_at_reference_gflops"] for p in pairs] == [0.0, 1.0]
    assert [p["difference_at_other_gflops"] for p in pairs] == [0.0, 1.0]


def test_plot_takes_means_that_miss_equal_values(tmp_path):
    """Three seeds at one fixed cost: their mean GFLOPs may round past min and max; the bars stay valid."""
    g = 0.1157  # EViT's cost at budget 0.5 on the embedded benchmark
    assert np.mean([g, g, g]) < g  # the case itself (if it ever stops holding, pick another value)
    cost = {0.4: 0.1089, 0.5: g}
    points = [dict(_public_point("evit", b, s, 90.0 + s, cost[b]), gflops_min=cost[b], gflops_max=cost[b])
              for b in cost for s in (0, 1, 2)]
    doc = dict(points=points, methods=["evit"], clips=4, dense=dict(gflops_mean=0.2, top1=95.0))
    assert os.path.getsize(plot(doc, str(tmp_path / "p.png"))) > 0


def _public_point(method, budget, seed, top1, gflops):
    return {k: v for k, v in _p(method, budget, seed, top1, gflops, []).items() if k != "correct"}


def test_a_result_is_read_back_only_for_the_same_config_weights_data_and_code(tmp_path):
    data, weights = tmp_path / "data", tmp_path / "w.pt"
    data.mkdir()
    (data / "test.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    weights.write_bytes(b"1")
    cfg = load_config(CONFIG, ["DATA.PATH_TO_DATA_DIR", str(data)])
    first = _identity(cfg, str(weights))
    assert _identity(cfg, str(weights)) == first and first["code"] == code_digest()
    (data / "test.csv").write_text("label,youtube_id,time_start,time_end,split\nx,y,0,10,test\n")
    assert _identity(cfg, str(weights)) != first
    second = _identity(cfg, str(weights))
    weights.write_bytes(b"22")
    assert _identity(cfg, str(weights)) != second
    other = cfg.clone()
    other.ATS.SELECTION = "tome"
    assert _identity(other, str(weights))["config"] != _identity(cfg, str(weights))["config"]


def _predictions(folder):
    with open(os.path.join(folder, "predictions.jsonl")) as f:
        rows = sorted((json.loads(line) for line in f), key=lambda r: r["video_index"])
    return [r["correct"] for r in rows]


def test_compare_command_end_to_end(tmp_path, capsys):
    data = tmp_path / "d"
    make_synthetic(str(data), num_classes=3, videos_per_class={"train": 2, "test": 2}, num_frames=8, size=64, seed=1)
    torch.manual_seed(0)
    ckpt = str(tmp_path / "w.pt")
    torch.save(videoats.create_model("timesformer_tiny_8x64", num_classes=3).state_dict(), ckpt)
    out = tmp_path / "out"
    methods = ["inverse_transform", "evit", "tome"]
    args = ["compare", "--config", CONFIG, "--checkpoint", ckpt, "--methods", ",".join(methods), "--budgets", "0.5,0.7",
            "--seeds", "0,1", "--finetune-epochs", "1", "--timing-views", "2", "--output", str(out), "--json",
            "DATA.PATH_TO_DATA_DIR", str(data), "MODEL.NUM_CLASSES", "3", "DATA.SAMPLING_RATE", "1",
            "DATA.NUM_WORKERS", "0", "TRAIN.BATCH_SIZE", "3"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["clips"] == 6 and doc["blocks"] == [1, 2, 3]
    got = sorted((p["stage"], p["method"], p["budget"], p["seed"]) for p in doc["points"])
    want = sorted([("off-the-shelf", m, b, 0) for m in methods for b in (0.5, 0.7)] +
                  [("fine-tuned", m, b, s) for m in methods for b in (0.5, 0.7) for s in (0, 1)])
    assert got == want
    for p in doc["points"]:
        assert p["gflops_min"] <= p["gflops_mean"] <= p["gflops_max"] < doc["dense"]["gflops_mean"]
    # every fine-tune trained with its own method, at the fine-tune budget, and moved the weights
    before = torch.load(ckpt)
    for m in methods:
        for s in (0, 1):
            [path] = (out / "finetune").glob(f"{m}_seed{s}_*/checkpoints/last.pt")
            saved = torch.load(path, weights_only=False)
            assert f"SELECTION: {m}" in saved["config"] and "TOKENS:\n  - 0.5" in saved["config"]
            assert any(not torch.equal(before[k], v) for k, v in saved["state_dict"].items() if k in before)
    # the paired counts, recounted from the evaluations' own predictions
    for row in doc["paired"]:
        for m in methods[1:]:
            for pair in row[m]["pairs"]:
                seed = pair["seed"] if row["stage"] == "fine-tuned" else 0
                ref = _predictions(out / row["stage"] / f"inverse_transform_{row['budget']}_seed{seed}")
                other = _predictions(out / row["stage"] / f"{m}_{row['budget']}_seed{pair['seed']}")
                assert pair["reference_only"] == sum(a and not b for a, b in zip(ref, other))
                assert pair["other_only"] == sum(b and not a for a, b in zip(ref, other))
    assert len(doc["wall_clock"]) == 1 + len(methods) * 2
    assert all(t["seconds_per_view"] > 0 for t in doc["wall_clock"])
    assert os.path.getsize(doc["plot"]) > 0
    # a second run reads every evaluation and fine-tune back: the same points, no weights written again
    written = {p: p.stat().st_mtime_ns for p in (out / "finetune").rglob("last.pt")}
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["points"] == doc["points"] and again["paired"] == doc["paired"]
    assert {p: p.stat().st_mtime_ns for p in (out / "finetune").rglob("last.pt")} == written
    # another fine-tune budget is another fine-tune: new weights, the fine-tuned points measured again, the
    # off-the-shelf ones read back
    shelf = {p: p.stat().st_mtime_ns for p in (out / "off-the-shelf").rglob("point.json")}
    assert main(args + ["--finetune-budget", "0.7"]) == 0
    third = json.loads(capsys.readouterr().out)
    assert len(list((out / "finetune").rglob("last.pt"))) == 2 * len(written)
    assert {p: p.stat().st_mtime_ns for p in (out / "off-the-shelf").rglob("point.json")} == shelf
    assert third["finetune"] == dict(epochs=1, budget=0.7)


@pytest.mark.parametrize("argv,message", [(["--methods", "ats,evit"], "choose from"),
                                          (["--budgets", "0.5,1.5"], "ratios in (0, 1]"),
                                          (["--seeds", "x"], "comma-separated"),
                                          (["--timing-views", "0"], "at least 1 view"),
                                          (["--methods", "inverse_transform,tome", "ATS.VARIANT", "joint"],
                                           "'joint' would merge across frames")])
def test_compare_refuses_bad_input_in_one_line_before_any_work(argv, message, tmp_path, capsys):
    assert main(["compare", "--output", str(tmp_path / "out")] + argv) != 0
    assert not (tmp_path / "out" / "dense").exists()
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
