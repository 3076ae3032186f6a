"""GFLOPs accounting: hand-derived counts, fvcore vs analytic, published baselines, adaptive counts, CLI.

Big models are only counted analytically here, built without weight initialisation (the count reads
shapes, not values); fvcore traces run on tiny models and DeiT-S (4.6 GFLOPs).
"""
from __future__ import annotations

import json

import pytest
import torch

import videoats
from videoats.ats import stage as ats_stage
from videoats.cli import main
from videoats.data.clips import parse_views
from videoats.flops import analytic_gflops, dense_gflops, fvcore_count, padded_gflops, sample_gflops
from videoats.runner import ViewTable, account, gflops_summary

from test_ats import keep_every_candidate

TINY_VIDEO = (1, 3, 8, 32, 32)


def no_init():
    """Build without weights (the meta device): shapes are all an analytic count reads."""
    return torch.device("meta")


def fv(model, x):
    return fvcore_count(model, x).gflops


# ---------------------------------------------------------------------------------------------- by hand


def test_one_block_timesformer_by_hand():
    """1 divided block, T=8 frames, L=16 patches (32 px / 8 px), D=64, MLP 256, 10 classes."""
    model = videoats.create_model("timesformer_tiny_8x32", depth=1).eval()
    T, L, D, P, H, C = 8, 16, 64, 8, 256, 10
    patch = T * L * (3 * P * P) * D                      # conv, one MAC per weight per output position
    temporal = (5 * D * T * L                            # temporal_norm1 (fvcore: 5 flops per element)
                + T * L * D * 3 * D                      # qkv
                + 2 * L * T * T * D                      # q.k and attn.v over frames, per location
                + T * L * D * D + T * L * D * D)         # proj, temporal_fc
    n = L + 1                                            # spatial: CLS copied into every frame
    spatial = (5 * D * T * n + T * n * D * 3 * D         # norm1, qkv
               + 2 * T * n * n * D                       # q.k and attn.v within each frame
               + T * n * D * D)                          # proj
    mlp = (T * L + 1) * (5 * D + D * H + H * D)          # norm2 + fc1 + fc2 on patches and the CLS
    head = 5 * D + D * C                                 # final norm on the CLS, linear head
    expected = (patch + temporal + spatial + mlp + head) / 1e9
    assert analytic_gflops(model) == pytest.approx(expected, rel=1e-12)
    assert fv(model, torch.randn(TINY_VIDEO)) == pytest.approx(expected, rel=1e-12)


def divided_by_hand(kept, T=8, L=16, D=64, P=8, H=256, C=10, depth=4):
    """GFLOPs of one clip through the tiny divided TimeSformer keeping `kept` {block: bool (T, L) of the
    patch tokens left after that block}, written from the architecture, term by term: every token-wise
    layer on the tokens present, temporal attention per location over the frames where it is present
    (m_l^2 pairs, CLS excluded), spatial attention per frame over the CLS copy and that frame's tokens,
    and in an ATS block the CLS scoring row over the frame's keys plus the kept queries (1 + k_t) against
    the 1 + n_t keys. Projections and the MLP run on the kept tokens only (and the one CLS)."""
    present = torch.ones(T, L, dtype=torch.bool)
    total = T * L * 3 * P * P * D  # patch embedding
    for b in range(depth):
        after = kept.get(b, present)
        n, k = present.sum(1).double(), after.sum(1).double()  # tokens per frame in, out
        m = present.sum(0).double()  # frames per location
        total += (5 * D + 3 * D * D + D * D + D * D) * n.sum() + 2 * D * (m ** 2).sum()  # temporal
        total += (5 * D + 3 * D * D) * (T + n.sum()) + 2 * D * ((1 + k) * (1 + n)).sum()  # norm1, qkv, pairs
        total += D * D * (T + k.sum())  # proj on the CLS copies and kept queries
        if b in kept:
            total += D * (1 + n).sum()  # the scoring row q_cls . K per frame
        total += (k.sum() + 1) * (5 * D + 2 * D * H)  # norm2 + MLP
        present = after
    return float(total + 5 * D + D * C) / 1e9


def test_kept_tokens_by_hand():
    """Frames that keep different locations (what the ragged frame/joint layouts give), priced by hand.
    After block 1 frame t keeps locations t .. t + 4 (a sliding window: every location but 12-15 is in some
    frame, none in all 8); after block 2 frames 0-4 keep location 4 and frames 4-7 location 8, so block 3's
    temporal attention has 5^2 + 4^2 pairs per head dim, not 2 x 8^2."""
    model = videoats.create_model("timesformer_tiny_8x32").eval()
    slide = torch.zeros(8, 16, dtype=torch.bool)
    for t in range(8):
        slide[t, t:t + 5] = True
    sparse = torch.zeros(8, 16, dtype=torch.bool)
    sparse[:5, 4] = True
    sparse[4:, 8] = True
    assert not (sparse & ~slide).any()  # block 2 keeps a subset of what block 1 left
    kept = {1: slide, 2: sparse}
    assert analytic_gflops(model, masks=kept) == pytest.approx(divided_by_hand(kept), rel=1e-12)


# ---------------------------------------------------------------------------------------------- dense


@pytest.mark.parametrize("name,kw,shape", [
    ("timesformer_tiny_8x32", {}, TINY_VIDEO),
    ("timesformer_tiny_8x32", {"attention_type": "space_only"}, TINY_VIDEO),
    ("timesformer_tiny_8x32", {"attention_type": "joint_space_time"}, TINY_VIDEO),
    ("timesformer_tiny_8x32", {"img_size": 48}, (1, 3, 8, 48, 48)),  # pos-embed resize
    ("xvit_tiny_8x32", {}, TINY_VIDEO),
    ("deit_tiny_patch8_32", {}, (1, 3, 32, 32)),
])
def test_analytic_equals_fvcore_dense(name, kw, shape):
    model = videoats.create_model(name, **kw).eval()
    count = fvcore_count(model, torch.randn(shape))
    assert analytic_gflops(model, shape[1:]) == pytest.approx(count.gflops, rel=5e-3)
    # nothing heavy skipped; the elementwise ops the convention leaves out are reported, not hidden
    assert not count.missing and "aten::gelu" in count.not_counted
    assert "scaled_dot_product_attention" in count.by_operator  # counted by our handle


PUBLISHED_PER_VIEW = [
    ("timesformer_8x224", 196.1, 0.005),
    ("timesformer_hr_16x448", 1704.5, 0.005),
    ("timesformer_l_96x224", 2382.5, 0.005),
    ("deit_small_patch16_224", 4.6, 0.005),
    ("cvt_21_384", 24.9, 0.005),
    ("psvit_b18_224", 8.8, 0.005),
    ("psvit_b14_224", 5.4, 0.005),
    # CvT at 224 px: our count (the official code's modules, fvcore's convention; analytic = fvcore) is 1.9%
    # (CvT-13: 4.585) and 1.5% (CvT-21: 7.206) over the CvT paper's 4.5 and 7.1; the norms (LayerNorm,
    # BatchNorm) explain 0.02-0.03 of it, the rest is not identified. Pinned: a change to the count shows
    ("cvt_13_224", 4.5, 0.02),
    ("cvt_21_224", 7.1, 0.02),
]


@pytest.mark.parametrize("name,published,tol", PUBLISHED_PER_VIEW)
def test_published_baselines_analytic(name, published, tol):
    with no_init():
        model = videoats.create_model(name)
    assert analytic_gflops(model) == pytest.approx(published, rel=tol)


def test_published_totals():
    with no_init():
        hr = videoats.create_model("timesformer_hr_16x448")
        base = videoats.create_model("timesformer_8x224")
    assert 3 * analytic_gflops(hr) == pytest.approx(5110, rel=5e-3)
    assert 3 * analytic_gflops(base) == pytest.approx(590, rel=5e-3)


def test_xvit_count_by_hand_and_its_gap_to_the_published_figure():
    """X-ViT B/16 16x: 16 frames through ViT-B/16 (per-frame CLS; the shift moves channels and costs
    nothing), the final norm on each frame's CLS, then the temporal head (one block over 1 + T tokens and
    an MLP head), by hand. The published total, 850 at 1x3 (X-ViT paper, ATS poster), is 283.33 per view:
    1.912 GFLOPs (0.67%) above this count, i.e. 0.1195 per frame. No op the convention leaves out is that
    big (per frame: GELU 0.0073, softmax 0.0056, bias adds 0.0163, residual adds 0.0036; the official
    final norm over all 197 tokens instead of the CLS 0.0008): the nearest single term is one more patch
    embedding per frame (0.1156). The X-ViT release ships no FLOPs script, so the source of the gap is not
    identified; it is pinned here so that any change to our count shows."""
    T, N, D, H, C = 16, 196, 768, 3072, 600
    n = N + 1
    block = (5 * D + 3 * D * D) * n + 2 * n * n * D + D * D * n + (5 * D + 2 * D * H) * n
    head = (5 * D + 3 * D * D + D * D + 5 * D + 2 * D * H) * (T + 1) + 2 * D * (T + 1) ** 2 \
        + 5 * D + D * D + D * C
    hand = (T * N * 3 * 16 * 16 * D + T * 12 * block + T * 5 * D + head) / 1e9
    with no_init():
        model = videoats.create_model("xvit_b16_16x224")
    ours = analytic_gflops(model)
    assert ours == pytest.approx(hand, rel=1e-12)
    assert 850 / 3 - ours == pytest.approx(1.912, abs=5e-4)


def test_deit_small_fvcore_matches_published():
    model = videoats.create_model("deit_small_patch16_224").eval()  # fvcore traces real tensors
    counted = dense_gflops(model)
    assert counted == pytest.approx(4.6, rel=5e-3)
    assert counted == pytest.approx(analytic_gflops(model), rel=1e-9)


def test_dense_count_of_an_ats_model_switches_ats_off():
    model = ats_model("deit_tiny_patch8_32", "image")
    plain = videoats.create_model("deit_tiny_patch8_32").eval()
    assert dense_gflops(model) == pytest.approx(dense_gflops(plain), rel=1e-12)
    assert model.ats is not None and model(torch.randn(1, 3, 32, 32)).shape == (1, 10)  # ATS back on
    assert len(model.ats_trace) == 2


# ---------------------------------------------------------------------------------------------- ATS


def ats_model(name="timesformer_tiny_8x32", variant="tube", blocks=(1, 2), tokens=0.5, drop=True, **kw):
    torch.manual_seed(0)
    return videoats.create_model(name, ats=dict(blocks=list(blocks), tokens=tokens, variant=variant,
                                                drop_tokens=drop), **kw).eval()


@pytest.mark.parametrize("name,variant", [
    ("timesformer_tiny_8x32", "tube"), ("timesformer_tiny_8x32", "frame"),
    ("xvit_tiny_8x32", "frame"), ("deit_tiny_patch8_32", "image"),
])
def test_ats_analytic_equals_fvcore_batch1_pruned(name, variant):
    model = ats_model(name, variant)
    x = torch.randn(TINY_VIDEO if model.is_video else (1, 3, 32, 32))
    traced = fv(model, x)  # the trace runs the forward, so ats_trace is this input's
    assert videoats.ats.kept_tokens(model)[1].item() < (8 if model.is_video else 1) * 16
    assert padded_gflops(model, x) == pytest.approx(traced, rel=5e-3)
    per_sample = float(sample_gflops(model, x)[0])
    if variant in ("tube", "image"):  # same locations in every frame: no padding anywhere
        assert per_sample == pytest.approx(traced, rel=5e-3)
    else:  # frames keep different locations; attention pads them to their union
        assert per_sample <= traced
    assert per_sample < analytic_gflops(model)
    if name.startswith("timesformer"):  # the kept tokens of this forward pass, priced by hand
        masks = {r.block: r.mask[0] for r in model.ats_trace}
        assert per_sample == pytest.approx(divided_by_hand(masks), rel=1e-12)


@pytest.mark.parametrize("variant,drop", [("frame", True), ("joint", True), ("tube", False)])
def test_padded_equals_what_a_batch_computes(variant, drop):
    model = ats_model(variant=variant, drop=drop)
    x = torch.randn(3, *TINY_VIDEO[1:])
    traced = fv(model, x)  # per sample of the batch of 3
    assert padded_gflops(model, x) == pytest.approx(traced, rel=1e-9)
    assert float(sample_gflops(model, x).mean()) <= padded_gflops(model, x) + 1e-12


def _keep_top(scores, n_samples, present=None, width=None):
    return scores.argmax(dim=1, keepdim=True), torch.ones(scores.shape[0], 1, dtype=torch.bool)


def test_keep_everything_costs_dense_plus_scoring_rows(monkeypatch):
    monkeypatch.setattr(ats_stage, "inverse_transform_sample", keep_every_candidate)
    model = ats_model(blocks=(1, 2))
    x = torch.randn(2, *TINY_VIDEO[1:])
    model(x)
    T, L, D = 8, 16, 64
    scoring = 2 * T * (1 + L) * D / 1e9  # per ATS block and frame: the CLS row q_cls . K (heads x dim = D)
    dense = divided_by_hand({})
    assert sample_gflops(model, x).tolist() == pytest.approx([dense + scoring] * 2, rel=1e-12)
    assert padded_gflops(model, x) == pytest.approx(dense + scoring, rel=1e-12)
    assert fv(model, x[:1]) == pytest.approx(dense + scoring, rel=1e-9)


def test_per_sample_between_minimum_and_dense(monkeypatch):
    x = torch.randn(4, *TINY_VIDEO[1:])
    with monkeypatch.context() as m:
        m.setattr(ats_stage, "inverse_transform_sample", _keep_top)
        low_model = ats_model(blocks=(1,))
        low = fv(low_model, x[:1])  # one location kept after block 1: the least ATS can keep
        assert float(sample_gflops(low_model, x[:1])[0]) == pytest.approx(low, rel=1e-9)
    model = ats_model(blocks=(1,), tokens=0.3)
    model(x)
    per = sample_gflops(model, x)
    dense = analytic_gflops(model)
    assert per.shape == (4,)
    assert bool((per > low).all()) and bool((per < dense).all())


def test_sample_gflops_dense_model_and_meter():
    model = videoats.create_model("timesformer_tiny_8x32").eval()
    x = torch.randn(2, *TINY_VIDEO[1:])
    model(x)
    assert sample_gflops(model, x).tolist() == pytest.approx([divided_by_hand({})] * 2, rel=1e-12)
    ats = ats_model()
    table = ViewTable()
    for _ in range(2):
        ats(x)
        table.add(account(ats, x))
    s = gflops_summary(table.packed(), (1, 3))
    assert s["per_view"]["count"] == 4
    assert s["per_view"]["min"] <= s["per_view"]["mean"] <= s["per_view"]["max"] < analytic_gflops(ats)
    assert s["total"]["mean"] == pytest.approx(3 * s["per_view"]["mean"])
    assert s["padded_per_view"] >= s["per_view"]["mean"] - 1e-12


def test_sample_gflops_needs_a_forward_pass():
    with pytest.raises(videoats.VideoATSError):
        sample_gflops(ats_model())


def test_parse_views():
    assert parse_views("1x3") == (1, 3) and parse_views("10X3") == (10, 3)
    for bad in ("3", "1x", "0x3", "axb"):
        with pytest.raises(videoats.VideoATSError):
            parse_views(bad)


# ---------------------------------------------------------------------------------------------- CLI


def _json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_published_model_json(capsys):
    out = _json(capsys, ["flops", "--model", "timesformer_hr_16x448", "--views", "1x3"])
    assert out["views"] == "1x3" and out["view_shape"] == [3, 16, 448, 448]
    assert out["dense"]["per_view"]["analytic"] == pytest.approx(1704.5, rel=5e-3)
    assert out["dense"]["total"]["analytic"] == pytest.approx(5110, rel=5e-3)
    assert abs(out["published"]["diff_per_view_pct"]) < 0.5
    assert out["ats"] is None and "multiply-add" in out["convention"]


def test_cli_dense_tiny_both_counters(capsys):
    out = _json(capsys, ["flops", "--model", "xvit_tiny_8x32", "--views", "2x3", "--counter", "both"])
    per = out["dense"]["per_view"]
    assert per["fvcore"] == pytest.approx(per["analytic"], rel=5e-3)
    assert out["dense"]["total"]["analytic"] == pytest.approx(6 * per["analytic"])


def test_cli_ats_synthetic(capsys):
    out = _json(capsys, ["flops", "--model", "timesformer_tiny_8x32", "--ats-blocks", "1,2", "--ats-tokens", "0.5",
                         "--batch-size", "2", "--counter", "both"])
    ats = out["ats"]
    assert ats["samples"] == 2 and "synthetic" in ats["input"]
    ps = ats["per_sample_per_view"]
    assert ps["min"] <= ps["mean"] <= ps["max"] < out["dense"]["per_view"]["analytic"]
    assert ats["per_sample_total"]["mean"] == pytest.approx(3 * ps["mean"])
    assert ats["padded_per_view"] >= ps["mean"] - 1e-12
    check = ats["fvcore_check_first_sample"]
    assert check["padded_analytic"] == pytest.approx(check["fvcore"], rel=5e-3)
    assert set(ats["kept_tokens"]) == {"1", "2"}


def test_cli_ats_random_is_labelled_and_human_table(capsys):
    assert main(["flops", "--model", "deit_tiny_patch8_32", "--ats-blocks", "1", "--input", "random",
                 "--batches", "2", "--batch-size", "2"]) == 0
    text = capsys.readouterr().out
    assert "NOT real content" in text and "per view" in text and "padded" in text and "total (1x1)" in text


@pytest.mark.parametrize("argv,needle", [
    (["--model", "timesformer_tiny_8x32", "--views", "1y3"], "views"),
    (["--model", "timesformer_tiny_8x32", "--ats-tokens", "0.5"], "--ats-blocks"),
    (["--model", "timesformer_tiny_8x32", "--ats-blocks", "9"], "out of range"),
    (["--model", "timesformer_tiny_8x32", "--ats-blocks", "1", "--ats-variant", "spiral"], "variant"),
    (["--model", "deit_tiny_patch8_32", "--frames", "8"], "image model"),
    (["--model", "no_such_model"], "unknown model"),
    (["--model", "xvit_tiny_8x32", "--ats-blocks", "1", "--input", "/no/such.mp4"], "no such file"),
])
def test_cli_bad_arguments_one_line(capsys, argv, needle):
    assert main(["flops"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and err.startswith("videoats flops: error:")


def test_meter_per_video_totals():
    model = ats_model()
    x = torch.randn(4, *TINY_VIDEO[1:])
    table = ViewTable()
    model(x)
    per = sample_gflops(model, x)
    table.add(account(model, x), keys=torch.tensor([0, 0, 1, 1]))
    s = gflops_summary(table.packed(), (1, 2))
    assert s["total"]["count"] == 2 and "sum" in s["total_is"]
    assert s["total"]["max"] == pytest.approx(max(per[:2].sum().item(), per[2:].sum().item()))
