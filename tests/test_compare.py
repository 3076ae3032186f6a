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
from videoats.comparison import paired_rows
from videoats.data.synthetic import make_synthetic

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic", "benchmark_ats.yaml")


def _p(method, budget, seed, top1, gflops, correct, stage="off-the-shelf"):
    return dict(method=method, stage=stage, budget=budget, seed=seed, top1=top1, gflops_mean=gflops,
                correct=np.array(correct, dtype=bool))


def test_paired_rows_by_hand():
    points = [
        _p("inverse_transform", 0.5, 0, 75.0, 0.10, [1, 1, 1, 0]),
        _p("top_k", 0.3, 0, 25.0, 0.08, [1, 0, 0, 0]),
        _p("top_k", 0.5, 0, 50.0, 0.12, [1, 0, 0, 1]),
        # random: seed 0 right where ATS is wrong, seed 1 never; off the shelf both pair with ATS's only point
        _p("random", 0.3, 0, 25.0, 0.09, [0, 0, 0, 1]),
        _p("random", 0.5, 0, 50.0, 0.11, [0, 0, 1, 1]),
        _p("random", 0.3, 1, 0.0, 0.09, [0, 0, 0, 0]),
        _p("random", 0.5, 1, 0.0, 0.11, [0, 0, 0, 0]),
    ]
    rows = paired_rows(points, "inverse_transform", ["inverse_transform", "top_k", "random"])
    row = next(r for r in rows if r["budget"] == 0.5)
    # top-k at 0.5: ATS alone right on clips 1, 2; top-k alone on clip 3. At ATS's 0.10 GFLOPs top-k's curve is
    # half way from (0.08, 25) to (0.12, 50): 37.5, so ATS leads by 37.5
    assert row["top_k"]["pairs"] == [dict(seed=0, reference_only=2, other_only=1, difference_at_reference_gflops=37.5)]
    # random: 0.10 is half way from 0.09 to 0.11: seed 0 reads 37.5 (ATS +37.5), seed 1 reads 0 (ATS +75)
    assert [(p["seed"], p["reference_only"], p["other_only"], p["difference_at_reference_gflops"])
            for p in row["random"]["pairs"]] == [(0, 2, 1, 37.5), (1, 3, 0, 75.0)]
    assert row["random"]["difference"] == dict(mean=56.25, min=37.5, max=75.0, n=2)
    # at 0.3 ATS has no point: nothing to pair
    assert next(r for r in rows if r["budget"] == 0.3)["top_k"]["pairs"] == []


def test_a_fine_tuned_seed_pairs_with_the_same_seed():
    points = [_p("inverse_transform", 0.5, s, 50.0 + s, 0.1, [s, 1], "fine-tuned") for s in (0, 1)]
    points += [_p("evit", 0.5, s, 50.0, 0.1, [1, 1 - s], "fine-tuned") for s in (0, 1)]
    pairs = paired_rows(points, "inverse_transform", ["inverse_transform", "evit"])[0]["evit"]["pairs"]
    assert [(p["seed"], p["reference_only"], p["other_only"]) for p in pairs] == [(0, 0, 1), (1, 1, 0)]
    assert [p["difference_at_reference_gflops"] for p in pairs] == [0.0, 1.0]


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
            saved = torch.load(out / "finetune" / f"{m}_seed{s}" / "checkpoints" / "last.pt", weights_only=False)
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


@pytest.mark.parametrize("flag,value,message", [("--methods", "ats,evit", "choose from"),
                                                 ("--budgets", "0.5,1.5", "ratios in (0, 1]"),
                                                 ("--seeds", "x", "comma-separated")])
def test_compare_refuses_bad_lists_in_one_line(flag, value, message, capsys):
    assert main(["compare", flag, value]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
