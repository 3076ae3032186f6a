"""EViT and ToMe (`selection="evit"` / `"tome"`): their GFLOPs on DeiT-S against a count written by hand from
their papers' schedules and against the published figures, fvcore against the analytic count in every layout,
and the static layout captured whole.

Published: EViT DeiT-S, keep rate 0.7 at blocks 4, 7 and 10 (0-based 3, 6, 9): 79.5% at 3.0 GFLOPs (Liang et
al., ICLR 2022, and its README); ToMe DeiT-S r = 13: 79.4% at 2.7 GFLOPs (Bolya et al., ICLR 2023, as
paperswithcode lists it). See ../shared/reference/token-reduction-peers.md.
"""
from __future__ import annotations

import pytest
import torch

import videoats
from videoats import apply_ats
from videoats.errors import VideoATSError
from videoats.flops import fvcore_count, padded_gflops, sample_gflops

D, HEADS, MLP, CLASSES, PATCHES = 384, 6, 1536, 1000, 196  # DeiT-S


def deit_s_by_hand(tokens_in, tokens_out, extra) -> float:
    """GFLOPs of DeiT-S when block i attends over tokens_in[i] tokens (CLS included, every query) and its MLP
    runs on tokens_out[i]; `extra[i]` adds what the reducer itself computes there. fvcore's convention: a MAC
    is a flop, LayerNorm 5 per element, q.k^T and attn.v one MAC per channel and pair."""
    total = PATCHES * 3 * 16 * 16 * D  # patch embedding
    for n, m, e in zip(tokens_in, tokens_out, extra):
        total += n * (5 * D + 3 * D * D) + 2 * n * n * D + n * D * D  # norm1, qkv, attention, proj
        total += m * (5 * D + 2 * D * MLP) + e  # norm2, fc1, fc2
    total += 5 * D + D * CLASSES  # final norm on the CLS, head
    return total / 1e9


@pytest.fixture(scope="module")
def deit_s():
    torch.manual_seed(0)
    return videoats.create_model("deit_small_patch16_224").eval()


def _gflops(model, ats):
    apply_ats(model, ats)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        model(x)
    return float(sample_gflops(model, x)[0]), float(padded_gflops(model, x))


def test_evit_deit_s_at_its_published_schedule(deit_s):
    # budget 0.7 counts the CLS: round(0.7 * 197) = 138 tokens = CLS + 137 attended; the fused token is one more.
    # Then round(0.7 * 139) = 97 -> 96 + 1 + CLS = 98; round(0.7 * 98) = 69 -> 68 + 1 + CLS = 70.
    n_in = [197] * 4 + [139] * 3 + [98] * 3 + [70] * 2
    n_out = [197] * 3 + [139] + [139] * 2 + [98] + [98] * 2 + [70] + [70] * 2
    score_rows = [0] * 12
    for block, n in ((3, 197), (6, 139), (9, 98)):
        score_rows[block] = n * D  # the CLS attention row EViT reads, computed once more
    expected = deit_s_by_hand(n_in, n_out, score_rows)
    per_sample, padded = _gflops(deit_s, dict(blocks=[3, 6, 9], tokens=0.7, selection="evit"))
    assert per_sample == pytest.approx(expected, rel=1e-12)
    assert padded == pytest.approx(expected, rel=1e-12)
    assert per_sample == pytest.approx(3.0, rel=0.02)


def test_tome_deit_s_at_r13(deit_s):
    n_in = [197 - 13 * i for i in range(12)]
    n_out = [n - 13 for n in n_in]
    # matching: the present patches split into |A| = p // 2 sources and |B| = p - p // 2 destinations, one
    # head-wide (64) product per pair
    match = [(p // 2) * (p - p // 2) * (D // HEADS) for p in (n - 1 for n in n_in)]
    expected = deit_s_by_hand(n_in, n_out, match)
    per_sample, padded = _gflops(deit_s, dict(blocks=list(range(12)), tokens=n_out, selection="tome"))
    assert per_sample == pytest.approx(expected, rel=1e-12)
    assert padded == pytest.approx(expected, rel=1e-12)
    assert per_sample == pytest.approx(2.7, rel=0.02)


CASES = [("timesformer_tiny_8x32", v, s) for s, vs in (("evit", ("tube", "frame", "joint")),
                                                       ("tome", ("tube", "frame"))) for v in vs]
CASES += [("xvit_tiny_8x32", "joint", "evit"), ("xvit_tiny_8x32", "frame", "tome"),
          ("deit_tiny_patch8_32", "image", "evit"), ("deit_tiny_patch8_32", "image", "tome")]


def _tiny(name, variant, selection, mode, batch):
    torch.manual_seed(0)
    model = apply_ats(videoats.create_model(name).eval(),
                      dict(blocks=[1, 2, 3], tokens=0.6, variant=variant, selection=selection, mode=mode))
    shape = (batch, 3, 8, 32, 32) if model.is_video else (batch, 3, 32, 32)
    x = torch.randn(shape)
    x[:, :, ..., :8] *= 4  # a bright band, so attention is far from uniform
    return model, x


@pytest.mark.parametrize("name,variant,selection", CASES)
@pytest.mark.parametrize("mode", ["trim", "static"])
def test_fvcore_prices_what_the_batch_computed(name, variant, selection, mode):
    model, x = _tiny(name, variant, selection, mode, batch=2)
    traced = fvcore_count(model, x).gflops  # runs the forward: the record is this batch's
    assert padded_gflops(model, x) == pytest.approx(traced, rel=1e-9)
    if mode == "trim" and variant in ("tube", "image"):  # nothing padded at batch 1: each token priced once
        model(x[:1])
        assert float(sample_gflops(model, x[:1])[0]) == pytest.approx(fvcore_count(model, x[:1]).gflops, rel=1e-9)


@pytest.mark.parametrize("name,variant,selection", [("timesformer_tiny_8x32", "joint", "evit"),
                                                    ("timesformer_tiny_8x32", "frame", "tome"),
                                                    ("xvit_tiny_8x32", "tube", "tome")])
def test_static_layout_compiles_as_one_graph(name, variant, selection):
    torch._dynamo.reset()
    model, x = _tiny(name, variant, selection, "static", batch=2)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="eager")(x)
    assert torch.equal(compiled, eager)


def test_reducers_that_do_not_apply_are_refused():
    with pytest.raises(VideoATSError, match="'joint' would merge across frames"):
        apply_ats(videoats.create_model("timesformer_tiny_8x32"), dict(blocks=[1], selection="tome", variant="joint"))
    with pytest.raises(VideoATSError, match="does not support"):
        apply_ats(videoats.create_model("cvt_13_224"), dict(blocks=[3], selection="evit"))
