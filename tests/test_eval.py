"""Evaluation engine: hand-computed metrics, coverage, `videoats eval` end to end, torchrun, plots, bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from videoats.cli import main as cli_main
from videoats.config import load_config
from videoats.evaluation import metrics as M

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")

# ---------------------------------------------------------------------------------------------- metrics

# 5 videos, 6 classes. Video 0 is the case where the aggregations disagree:
#   sum of logits [1, 2.5, 0, ...] -> class 1; max [4, 2.5, 0, ...] -> class 0;
#   mean softmax: view A gives class 0 e^4/(e^4+5) = 0.9161, view B gives it e^-3/(e^-3+e^2.5+4) = 0.0031,
#   class 1 gets 1/(e^4+5) = 0.0168 and e^2.5/(...) = 0.7505: means 0.4596 vs 0.3836 -> class 0.
# Videos 2 and 3 predict class 4 with scores 4 > 3 > 2 > 1 > 0 > -1 (top-5 = 4,3,2,1,0): label 3 is a
# top-5 hit, label 5 a top-5 miss. Video 4 has one all-zero view: ties go to the lowest index (class 0).
VIEWS = [  # (video, label, logits)
    (0, 0, [4, 0, 0, 0, 0, 0]), (0, 0, [-3, 2.5, 0, 0, 0, 0]),
    (1, 2, [0, 0, 1, 0, 0, 0]), (1, 2, [0, 0, 1, 0, 0, 0]),
    (2, 3, [1, 2, 3, 4, 5, -1]), (2, 3, [1, 2, 3, 4, 5, -1]),
    (3, 5, [1, 2, 3, 4, 5, -1]), (3, 5, [1, 2, 3, 4, 5, -1]),
    (4, 2, [0, 0, 0, 0, 0, 0]),
]
# classes present: 0 (v0), 2 (v1, v4), 3 (v2), 5 (v3); mean class accuracy averages those four
EXPECTED = {
    "sum_logits": {"top1": 20.0, "top5": 80.0, "mean_class_accuracy": 12.5},    # right: v1
    "mean_softmax": {"top1": 40.0, "top5": 80.0, "mean_class_accuracy": 37.5},  # right: v0, v1
    "max_logits": {"top1": 40.0, "top5": 80.0, "mean_class_accuracy": 37.5},
}


def _table(order=None):
    rows = [VIEWS[i] for i in (order if order is not None else range(len(VIEWS)))]
    video = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([r[1] for r in rows])
    logits = torch.tensor([r[2] for r in rows], dtype=torch.float32)
    return logits, labels, video


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_metrics_by_hand(method):
    logits, labels, video = _table()
    out = M.evaluate_views(logits, labels, video, method)
    for key, want in EXPECTED[method].items():
        assert out["video"][key] == pytest.approx(want), key
    assert out["video"]["num"] == 5
    assert out["views"].tolist() == [2, 2, 2, 2, 1]
    # clip level: views right are v0/A (class 0) and both of v1 -> 3 of 9
    assert out["clip"]["top1"] == pytest.approx(100 * 3 / 9)
    # the view order must not matter (distributed runs hand them over in another order)
    perm = [8, 3, 0, 6, 1, 5, 2, 7, 4]
    again = M.evaluate_views(*_table(perm), method)
    assert again["video"] == out["video"]
    assert torch.allclose(again["scores"], out["scores"])


def test_aggregate_values():
    a = torch.tensor([[4.0, 0, 0, 0, 0, 0], [-3, 2.5, 0, 0, 0, 0]])
    assert M.aggregate(a, "sum_logits")[:2].tolist() == [1.0, 2.5]
    assert M.aggregate(a, "max_logits")[:2].tolist() == [4.0, 2.5]
    soft = M.aggregate(a, "mean_softmax")
    assert soft[0].item() == pytest.approx(0.4596, abs=1e-4) and soft[1].item() == pytest.approx(0.3836, abs=1e-4)
    assert soft.sum().item() == pytest.approx(1.0)


def test_unlabelled_rows_are_left_out():
    scores = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 0]])
    out = M.classification_metrics(scores, torch.tensor([0, -1, 1]))
    assert out["num"] == 2 and out["top1"] == pytest.approx(50.0)


def test_coverage_incomplete_video():
    from videoats.evaluation.report import _coverage

    rec = lambda p, label=0: types.SimpleNamespace(path=p, label=label)  # noqa: E731
    ds = types.SimpleNamespace(views_per_video=6, num_videos=3, videos=[rec("a.mp4"), rec("b.mp4"), rec("c.mp4")])
    failed = [{"video_index": 1, "clip_index": 1, "path": "b.mp4", "reason": "timeout", "detail": "20 s"},
              {"video_index": 2, "clip_index": 0, "path": "c.mp4", "reason": "missing", "detail": "no such file"}]
    cov = _coverage(ds, torch.tensor([0, 1]), torch.tensor([6, 3]), failed)
    assert cov["evaluated_videos"] == 2 and cov["not_evaluated_videos"] == 1
    assert cov["incomplete"] == [{"video_index": 1, "path": "b.mp4", "views_seen": 3, "views_expected": 6,
                                  "reasons": ["timeout: 20 s"]}]
    assert cov["missing"] == [{"path": "c.mp4", "detail": "no such file"}]
    assert cov["expected_views"] == 18 and cov["evaluated_views"] == 9 and not cov["complete"]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """5 classes, 1 test video each (an odd count, so DistributedSampler pads), 32 px, 32 frames."""
    from videoats.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("synth")
    make_synthetic(str(out), num_classes=5, videos_per_class=(1, 1, 1), num_frames=32, size=32, seed=3)
    return str(out)


def _cfg_args(data_dir, name="tiny_timesformer.yaml", *extra):
    return ["--config", os.path.join(CONFIGS, "synthetic", name), "DATA.PATH_TO_DATA_DIR", data_dir,
            "DATA.NUM_WORKERS", "0", "MODEL.NUM_CLASSES", "5", "TEST.NUM_SPATIAL_CROPS", "3",
            "TEST.BATCH_SIZE", "4", "DEVICE", "cpu", *extra]


def _cfg(data_dir, name="tiny_timesformer.yaml", *extra):
    args = _cfg_args(data_dir, name, *extra)
    return load_config(args[1], args[2:])


def _checkpoint(tmp_path, cfg, label_names, name="ckpt.pt"):
    from videoats.checkpoint import save_checkpoint
    from videoats.models.build import build_from_cfg as build_model

    model = build_model(cfg)
    with torch.no_grad():  # a fixed, non-trivial head so predictions differ between classes
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    return save_checkpoint(str(tmp_path / name), model, config=cfg, label_names=label_names)


def _labels(data_dir):
    with open(os.path.join(data_dir, "labels.txt")) as f:
        return [line.strip() for line in f if line.strip()]


def _png_ok(path, min_side=200):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side, img.shape
    assert float(np.var(img[..., :3])) > 1e-3, "blank image"


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------------------------- end to end


def test_coverage_missing_and_corrupt(synth, tmp_path):
    from videoats.evaluation.evaluate import evaluate

    data = str(tmp_path / "data")
    shutil.copytree(synth, data)
    cfg = _cfg(data)
    from videoats.data import build_dataset

    videos = build_dataset(cfg, "test").videos
    os.remove(videos[1].path)
    with open(videos[3].path, "wb") as f:
        f.write(b"this is not an mp4 file" * 50)
    res = evaluate(cfg, output_dir=str(tmp_path / "out"), progress=False)
    cov = res["coverage"]
    assert (cov["expected_videos"], cov["evaluated_videos"], cov["not_evaluated_videos"]) == (5, 3, 2)
    assert [m["path"] for m in cov["missing"]] == [videos[1].path]
    assert [c["path"] for c in cov["corrupt"]] == [videos[3].path]
    assert cov["evaluated_views"] == 9 and cov["expected_views"] == 15
    assert res["metrics"]["video"]["num_videos"] == 3 and "3 evaluated" in res["metrics"]["video"]["what"]
    preds = _read_jsonl(res["files"]["predictions"])
    assert [p["video_index"] for p in preds] == [0, 2, 4]
    assert all(p["views"] == 3 for p in preds)
    with open(res["files"]["results"]) as f:
        assert json.load(f)["coverage"]["not_evaluated_videos"] == 2


def tube_gflops_by_hand(kept_per_frame, T=8, L=16, D=64, P=8, H=256, C=5, depth=4):
    """GFLOPs of one view of the tiny divided TimeSformer (32 px, 8 px patches) with `tube` ATS keeping
    `kept_per_frame[b]` locations (the same in every frame) after block b; blocks not listed keep all. From
    the architecture, term by term: token-wise layers on the present tokens, temporal attention over the T
    frames of each present location, spatial attention per frame over a CLS copy and the frame's tokens, an
    ATS block's CLS scoring row over the frame's keys, projections and the MLP on the kept tokens."""
    total, n = T * L * 3 * P * P * D, L
    for b in range(depth):
        k = kept_per_frame.get(b, n)
        total += (5 * D + 5 * D * D) * T * n + 2 * D * n * T * T  # temporal: norm, qkv, proj, fc; pairs
        total += (5 * D + 3 * D * D) * T * (1 + n) + 2 * D * T * (1 + k) * (1 + n) + D * D * T * (1 + k)
        total += D * T * (1 + n) if b in kept_per_frame else 0  # scoring row
        total += (T * k + 1) * (5 * D + 2 * D * H)  # norm2 + MLP, patches and the one CLS
        n = k
    return (total + 5 * D + D * C) / 1e9


ROUNDED = 5e-5 + 1e-9  # the results round GFLOPs to 4 decimals


def test_cli_eval_json_ats_and_plots(synth, tmp_path, capsys):
    out = tmp_path / "ats"
    rc = cli_main(["eval", *_cfg_args(synth, "tiny_timesformer_ats_tube.yaml"), "--output", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(captured.out)
    assert res["aggregation"]["method"] == "sum_logits" and res["protocol"]["views"] == "1x3"
    assert res["model"]["ats"]["variant"] == "tube"
    kept = res["kept_tokens"]
    assert set(kept) == {"1", "2", "3"} and all(k["of"] == 8 * 16 for k in kept.values())
    # GFLOPs against a hand count from the kept tokens: tube keeps whole tubes, so a view's count per block
    # over 8 frames gives its tokens per frame; GFLOPs grow with every block's count, so the views' fewest and
    # most bound them (tight when every view kept the same: then the mean is the count of that view)
    fewest = {int(b): k["min"] / 8 for b, k in kept.items()}
    most = {int(b): k["max"] / 8 for b, k in kept.items()}
    assert all(v == int(v) for v in (*fewest.values(), *most.values()))  # whole tubes
    g = res["gflops"]
    dense = tube_gflops_by_hand({})
    assert g["dense_per_view"] == pytest.approx(dense, abs=ROUNDED)
    assert g["dense_total"] == pytest.approx(3 * dense, abs=ROUNDED)
    a = g["adaptive"]
    low, high = tube_gflops_by_hand(fewest), tube_gflops_by_hand(most)
    assert low - ROUNDED <= a["per_view"]["min"] <= a["per_view"]["mean"] <= a["per_view"]["max"] <= high + ROUNDED
    assert high < dense
    assert 3 * low - ROUNDED <= a["per_video_total"]["min"] <= a["per_video_total"]["max"] <= 3 * high + ROUNDED
    # the headline numbers are the adaptive ones: per view and over the 1x3 views (total rounded on its own)
    assert g["per_view"] == a["per_view"]["mean"]
    assert g["total"] == pytest.approx(3 * a["per_view"]["mean"], abs=3 * ROUNDED + ROUNDED)
    assert a["padded_per_view"] >= a["per_view"]["mean"] - 1e-9
    assert res["metrics"]["clip"]["num_views"] == 15 and "NOT comparable" in res["metrics"]["clip"]["what"]
    for key in ("results", "predictions", "summary", "kept_tokens_plot"):
        assert os.path.isfile(res["files"][key]), key
    _png_ok(res["files"]["kept_tokens_plot"])
    preds = _read_jsonl(res["files"]["predictions"])
    assert len(preds) == 5 and all(len(p["top5"]) == 5 and "gflops" in p for p in preds)

    # a dense run with the human summary, through the PySlowFast-style entry point (tools/test_net.py),
    # then the GFLOPs-vs-top-1 plot of both runs
    from videoats.cli import test_net_main

    dense_out = tmp_path / "dense"
    assert test_net_main([*_cfg_args(synth), "TEST.AGGREGATION", "mean_softmax", "--output", str(dense_out)]) == 0
    text = capsys.readouterr().out
    assert "video top-1 (1x3 views)" in text and "clip-level top-1" in text and "mean_softmax" in text
    assert "GFLOPs per view" in text and "x 3 views" in text
    with open(dense_out / "results.json") as f:
        dense = json.load(f)
    assert dense["kept_tokens"] is None and dense["gflops"]["adaptive"] is None
    assert dense["aggregation"]["method"] == "mean_softmax"
    assert not os.path.exists(dense_out / "kept_tokens.png")
    png = tmp_path / "gflops.png"
    rc = cli_main(["plot", str(out / "results.json"), str(dense_out / "results.json"), "--output", str(png),
                   "--json"])
    plotted = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(plotted["points"]) == 2
    _png_ok(str(png))


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["unknown_key", "missing_data", "missing_checkpoint", "other_arch"])
def test_bad_input_one_line_exit_2(case, synth, tmp_path, capsys):
    args = ["eval", *_cfg_args(synth), "--output", str(tmp_path / "out")]
    if case == "unknown_key":
        args += ["TEST.NO_SUCH_KEY", "1"]
    elif case == "missing_data":
        args += ["DATA.PATH_TO_DATA_DIR", str(tmp_path / "nowhere")]
    elif case == "missing_checkpoint":
        args += ["--checkpoint", str(tmp_path / "nope.pt")]
    else:
        other = _cfg(synth, "tiny_xvit.yaml")
        args += ["--checkpoint", _checkpoint(tmp_path, other, _labels(synth), "xvit.pt")]
    rc = cli_main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("videoats eval: error:"), err
    assert not os.path.exists(tmp_path / "out" / "results.json")


def test_label_order_mismatch_is_refused(synth, tmp_path, capsys):
    cfg = _cfg(synth)
    ckpt = _checkpoint(tmp_path, cfg, list(reversed(_labels(synth))))
    rc = cli_main(["eval", *_cfg_args(synth), "--checkpoint", ckpt, "--output", str(tmp_path / "o")])
    assert rc == 2 and "label order" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- distributed


def test_torchrun_two_processes_match_single(synth, tmp_path):
    from videoats.evaluation.evaluate import evaluate

    cfg = _cfg(synth, "tiny_timesformer_ats_tube.yaml")
    ckpt = _checkpoint(tmp_path, cfg, _labels(synth))
    single = evaluate(cfg, checkpoint=ckpt, output_dir=str(tmp_path / "one"), progress=False)

    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "videoats.cli", "eval", *_cfg_args(synth, "tiny_timesformer_ats_tube.yaml"),
           "--checkpoint", ckpt, "--output", str(tmp_path / "two"), "--json"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1, proc.stdout  # rank 0 only
    multi = json.loads(lines[0])
    assert multi["world_size"] == 2 and single["world_size"] == 1
    assert multi["metrics"] == single["metrics"]
    assert multi["coverage"] == single["coverage"]
    assert multi["coverage"]["evaluated_views"] == 15  # the padded repeat counted once
    assert multi["kept_tokens"] == single["kept_tokens"]
    assert multi["gflops"]["adaptive"]["per_view"] == single["gflops"]["adaptive"]["per_view"]
    one, two = _read_jsonl(single["files"]["predictions"]), _read_jsonl(multi["files"]["predictions"])
    assert [p["video_index"] for p in one] == [p["video_index"] for p in two] == list(range(5))
    for a, b in zip(one, two):
        assert [t["index"] for t in a["top5"]] == [t["index"] for t in b["top5"]]
        assert np.allclose([t["score"] for t in a["top5"]], [t["score"] for t in b["top5"]], atol=1e-4)
        assert a["views"] == b["views"] == 3
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))
