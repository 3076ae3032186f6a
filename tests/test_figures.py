"""`videoats figures`' statistics and its fixed-count baseline, against numbers derived by hand."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import videoats
from videoats import apply_ats
from videoats.ats import kept_tokens
from videoats.ats.sampler import inverse_transform_sample, top_k_sample
from videoats.cli import main
from videoats.data.synthetic import make_synthetic
from videoats.errors import VideoATSError
from videoats.config import load_config
from videoats.figures import equal_gflops_gaps, load_test_clips, ranks, run_setting, spearman

from test_ats import peaky, video


def test_ranks_average_ties():
    assert ranks([10, 30, 20, 30]).tolist() == [1, 3.5, 2, 3.5]


def test_spearman_by_hand():
    # ranks (1, 2, 3, 4, 5) and (2, 1, 4, 3, 5): d = (1, 1, 1, 1, 0), rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)
    x = np.random.default_rng(0).normal(size=50)
    assert spearman(x, np.exp(3 * x)) == pytest.approx(1.0)  # any increasing map: ranks are the same
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.ones(50)) is None  # a constant has no ranking
    # ties: Pearson of the mid-ranks (1.5, 1.5, 3) vs (1, 2, 3)
    a, b = np.array([1.5, 1.5, 3]), np.array([1, 2, 3])
    want = ((a - a.mean()) * (b - b.mean())).sum() / np.sqrt(((a - a.mean()) ** 2).sum() * ((b - b.mean()) ** 2).sum())
    assert spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(want)


def test_top_k_keeps_the_highest_scores_and_honours_the_sampler_contract():
    scores = torch.tensor([[0.1, 0.5, 0.0, 0.3, 0.2], [0.4, 0.1, 0.2, 0.0, 0.3]])
    index, keep = top_k_sample(scores, 3)
    assert sorted(index[0][keep[0]].tolist()) == [1, 3, 4] and sorted(index[1][keep[1]].tolist()) == [0, 2, 4]
    # per-row counts, absent candidates and zero scores are never kept
    present = torch.tensor([[True, False, True, True, True], [True] * 5])
    index, keep = top_k_sample(scores, torch.tensor([4, 2]), present, width=4)
    assert index.shape == keep.shape == (2, 4)
    assert sorted(index[0][keep[0]].tolist()) == [0, 3, 4]  # 1 is absent, 2 scores zero
    assert sorted(index[1][keep[1]].tolist()) == [0, 4]
    # the same shapes as the inverse transform sample it stands in for
    ref_index, ref_keep = inverse_transform_sample(scores, torch.tensor([4, 2]), present, width=4)
    assert ref_index.shape == index.shape and ref_keep.dtype == keep.dtype


@pytest.mark.parametrize("mode", ["trim", "static"])
def test_top_k_selection_keeps_the_budget_for_every_clip(mode):
    """Top-k keeps exactly the budget, every clip, in either layout (ATS keeps a content-dependent count at
    most the budget), and is named for what it is."""
    model = peaky(videoats.create_model("timesformer_tiny_8x32").eval())
    kept = {}
    for selection in ("top_k", "inverse_transform"):
        apply_ats(model, dict(blocks=[1], tokens=9, min_tokens=2, variant="frame", mode=mode, selection=selection))
        with torch.inference_mode():
            model(video(6))
        kept[selection] = kept_tokens(model)[1].tolist()
    assert kept["top_k"] == [8 * 8] * 6  # 9 tokens = 8 + CLS, in each of the 8 frames
    assert min(kept["inverse_transform"]) < 8 * 8  # so these clips tell the two rules apart
    assert model.ats.label() == "ATS frame b1 k9"
    apply_ats(model, dict(blocks=[1], tokens=9, selection="top_k"))
    assert model.ats.label() == "top-k tube b1 k9" and model.ats.to_dict()["selection"] == "top_k"
    with pytest.raises(VideoATSError, match="unknown ATS selection 'topk'; choose one of inverse_transform, top_k"):
        apply_ats(model, dict(blocks=[1], selection="topk"))


def test_equal_gflops_gap_interpolates_the_top_k_curve():
    points = [dict(setting="top-k off the shelf", weights="dense", budget=b, gflops_per_view=g, top1=t)
              for b, g, t in ((0.3, 1.0, 80.0), (0.6, 2.0, 90.0))]
    points += [dict(setting="ATS off the shelf", weights="dense", budget=0.5, gflops_per_view=1.25, top1=85.0),
               dict(setting="ATS off the shelf", weights="dense", budget=0.9, gflops_per_view=3.0, top1=95.0)]
    gaps = equal_gflops_gaps(points)
    assert len(gaps) == 1  # 3.0 GFLOPs lies outside the top-k curve
    assert gaps[0]["top_k_top1_at_same_gflops"] == pytest.approx(82.5) and gaps[0]["gap"] == pytest.approx(2.5)


def test_reversed_frames_are_the_clips_played_backwards():
    """The README's "the model uses time" figure compares each clip's prediction with that of the clip played
    backwards: the reversed predictions are those of the frames flipped in time, clip by clip (not in height
    or width, which a time-blind model would also notice), and a model blind to frame order (TimeSformer
    without its time embedding: attention over frames is order-free and the CLS averages the frames) changes
    none."""
    model = peaky(videoats.create_model("timesformer_tiny_8x32", num_classes=5).eval())
    clips = {"video": torch.randn(8, 3, 8, 32, 32, generator=torch.Generator().manual_seed(2)),
             "label": torch.arange(8) % 5}
    with torch.no_grad():
        forward, backward = (model(clips["video"].flip(dims)).argmax(1) for dims in ((), (2,)))
    assert not torch.equal(forward, backward)  # this model and these clips tell the two orders apart
    assert torch.equal(run_setting(model, clips, reverse=True)["pred"], backward)
    with torch.no_grad():
        model.time_embed.zero_()
        upside_down = model(clips["video"].flip(3)).argmax(1)
    blind = run_setting(model, clips)["pred"]
    assert not torch.equal(blind, upside_down)  # flipped the wrong way, the blind model would show a change
    assert torch.equal(run_setting(model, clips, reverse=True)["pred"], blind)


def test_figures_command_end_to_end_is_repeatable(tmp_path, capsys):
    """Random weights on six clips: every file is written, every clip counted, and a rerun gives the same JSON."""
    make_synthetic(str(tmp_path / "d"), num_classes=3, videos_per_class={"test": 2}, num_frames=8, size=64, seed=1)
    torch.manual_seed(0)
    ckpt = str(tmp_path / "w.pt")
    torch.save(videoats.create_model("timesformer_tiny_8x64", num_classes=3).state_dict(), ckpt)
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic", "benchmark_ats.yaml")
    docs = []
    for run in ("a", "b"):
        args = ["figures", "--config", config, "--dense", ckpt, "--finetuned", ckpt, "--budgets", "0.6", "--json",
                "--output", str(tmp_path / run), "DATA.PATH_TO_DATA_DIR", str(tmp_path / "d"), "MODEL.NUM_CLASSES", "3",
                "DATA.SAMPLING_RATE", "1", "DATA.NUM_WORKERS", "0", "ATS.TOKENS", "[0.6]"]
        assert main(args) == 0
        docs.append(json.loads(capsys.readouterr().out))
    doc = docs[0]
    assert doc["videos"] == 6 and [p["setting"] for p in doc["points"]] == [
        "dense", "ATS off the shelf", "top-k off the shelf", "ATS fine-tuned", "top-k fine-tuned"]
    for name in ("kept_tokens", "scaling", "adaptivity", "json"):
        assert os.path.getsize(doc["files"][name]) > 0
    assert all(len(v) == 6 and max(v) <= 8 * 64 for v in doc["kept_tokens_histogram"].values())
    # the share of changed predictions, recounted from the dense weights on the same clips
    clips = load_test_clips(load_config(config, args[args.index("DATA.PATH_TO_DATA_DIR"):]))
    model = videoats.create_model("timesformer_tiny_8x64", num_classes=3).eval()
    model.load_state_dict(torch.load(ckpt))
    with torch.no_grad():
        changed = (model(clips["video"]).argmax(1) != model(clips["video"].flip(2)).argmax(1)).double().mean()
    assert doc["dense"]["reversed_frames_change_prediction_pct"] == round(100 * float(changed), 2)
    strip = lambda d: {k: v for k, v in d.items() if k not in ("files",)}  # noqa: E731
    assert strip(docs[0]) == strip(docs[1])
