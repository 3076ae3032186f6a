"""PS-ViT: the sampling op against a literal re-statement of the official CUDA kernel, the official key names,
the fvcore GFLOPs convention, and ATS in the encoder after the sampling in every mode."""
import copy
import math

import pytest
import torch

import videoats
from videoats import apply_ats
from videoats.ats import token_masks
from videoats.ats import stage as ats_stage
from videoats.checkpoint import detect_layout, load_checkpoint
from videoats.checkpoint.layouts import from_official_psvit, to_official_psvit
from videoats.flops import analytic_gflops, fvcore_count, padded_gflops, sample_gflops
from videoats.models.psvit import sample_points

from test_ats import keep_every_candidate, peaky
from test_fake_cuda import fake_cuda_run, replayed_on_fake_cuda
from test_static import assert_pruned_equals_masked

TINY = "psvit_tiny_64"


def kernel_bilinear(feature, height, width, h, w):
    """`bilinear_interpolate` of layers/cinclude/cuda_helper.hpp, line by line, for one point and every channel
    (feature: (C, H, W))."""
    if h <= -1 or h >= height or w <= -1 or w >= width:
        return torch.zeros(feature.shape[0], dtype=torch.float64)
    h_low, w_low = math.floor(h), math.floor(w)
    h_high, w_high = h_low + 1, w_low + 1
    lh, lw = h - h_low, w - w_low
    hh, hw = 1.0 - lh, 1.0 - lw
    zero = torch.zeros(feature.shape[0], dtype=torch.float64)
    v1 = feature[:, h_low, w_low] if h_low >= 0 and w_low >= 0 else zero
    v2 = feature[:, h_low, w_high] if h_low >= 0 and w_high <= width - 1 else zero
    v3 = feature[:, h_high, w_low] if h_high <= height - 1 and w_low >= 0 else zero
    v4 = feature[:, h_high, w_high] if h_high <= height - 1 and w_high <= width - 1 else zero
    return hh * hw * v1 + hh * lw * v2 + lh * hw * v3 + lh * lw * v4


def test_sampling_equals_the_cuda_kernel_restated():
    """Random points in and around a 7 x 9 map, and the edges the kernel treats apart (-1, 0, H - 1, H, halves):
    grid_sample (bilinear, zeros, align_corners) gives the kernel's values; a wrong align_corners or padding
    mode, or swapped (y, x), fails."""
    g = torch.Generator().manual_seed(0)
    feature = torch.randn(2, 5, 7, 9, generator=g, dtype=torch.float64)
    edges = [-1.2, -1.0, -0.5, 0.0, 0.25, 3.0, 5.5, 6.0, 6.5, 7.0, 8.0, 8.5, 9.0, 9.3]
    pts = [(y, x) for y in edges for x in edges]
    pts += (torch.rand(200, 2, generator=g, dtype=torch.float64) * torch.tensor([9.0, 11.0]) - 1).tolist()
    points = torch.tensor(pts, dtype=torch.float64)[None].expand(2, -1, -1)
    ours = sample_points(feature, points)
    for b in range(2):
        expected = torch.stack([kernel_bilinear(feature[b], 7, 9, y, x) for y, x in pts])
        assert (ours[b] - expected).abs().max() < 1e-12


def test_initial_points_in_the_official_order():
    """A 6 x 6 grid of cell centres on the 16 x 16 feature map (64 px / 4): cell 16/6, centres (i + 1/2) * 16/6;
    point k = (y of row k mod 6, x of column k div 6): x outer, y inner, as the official meshgrid."""
    model = videoats.create_model(TINY)
    c = [(i + 0.5) * 16 / 6 for i in range(6)]
    expected = torch.tensor([(c[k % 6], c[k // 6]) for k in range(36)])
    assert torch.allclose(model.point_coord[0], expected)


def test_our_keys_are_the_official_ones(tmp_path):
    """Names hand-listed from models/ps_vit.py (stem Sequential indices, the shared position layer under both
    its names, offset layers on all but the last iteration, qkv without bias) and the published size."""
    model = videoats.create_model("psvit_b18_224")
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 21_344_302
    for k in ("stem.0.weight", "stem.1.running_var", "stem.4.conv1.weight", "stem.4.downsample.0.weight",
              "stem.4.downsample.1.bias", "stem.5.bn3.weight", "point_coord", "pos_layer.weight",
              "ps_layers.2.offset_layer.bias",
              "ps_layers.3.transformer_layer.attn.qkv.weight", "trans_layers.9.mlp.fc2.bias", "cls_token",
              "norm.weight", "head.bias"):
        assert k in sd, k
    assert sd["stem.5.downsample.0.weight"].shape == (384, 256, 1, 1)  # 256 -> 384: a projection
    assert not any(k.startswith("ps_layers.3.offset_layer") for k in sd)  # the last iteration predicts none
    assert not any(k.endswith("attn.qkv.bias") for k in sd)
    assert sd["point_coord"].shape == (1, 324, 2) and sd["stem.4.conv3.weight"].shape == (256, 64, 1, 1)
    assert detect_layout(sd) == "psvit_official"
    # the official model lists its shared position layer under every iteration too: the same tensor
    official = to_official_psvit(sd)
    assert sorted(set(official) - set(sd)) == sorted(f"ps_layers.{i}.position_layer.{p}" for i in range(4)
                                                     for p in ("weight", "bias"))
    assert official["ps_layers.3.position_layer.bias"] is sd["pos_layer.bias"]
    back, dropped = from_official_psvit(official)
    assert back.keys() == sd.keys() and len(dropped) == 8


def test_official_layout_file_round_trip(tmp_path):
    torch.manual_seed(0)
    ours = videoats.create_model(TINY).eval()
    with torch.no_grad():
        for k, v in ours.state_dict().items():
            if v.dtype.is_floating_point and k != "point_coord":
                v.copy_(torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v) * 0.2)
    # the official layout (shared position layer listed per iteration), as timm's load_checkpoint reads it
    torch.save({"state_dict": to_official_psvit(ours.state_dict())}, tmp_path / "psvit.pth")
    back = videoats.create_model(TINY).eval()
    report = load_checkpoint(back, tmp_path / "psvit.pth")
    assert report.source_format == "psvit_official" and len(report.ignored) == 4
    x = images()
    with torch.no_grad():
        assert torch.equal(back(x), ours(x))


def test_offsets_learn_through_the_bilinear_read():
    """The offsets start at zero (official init); their layers get a gradient through the read only (positions
    use the offset detached), so a model whose read ignored the offset would leave them without one."""
    model = videoats.create_model(TINY).train()
    model(images(2)).logsumexp(dim=1).sum().backward()
    grad = model.ps_layers[0].offset_layer.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def images(batch=3, seed=1):
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# -------------------------------------------------------------------------------------------- GFLOPs

def test_analytic_equals_fvcore():
    model = videoats.create_model(TINY).eval()
    assert analytic_gflops(model) == pytest.approx(fvcore_count(model, images(1)).gflops, rel=1e-12)


def test_published_counts():
    """8.8 (B/18) and 5.4 (B/14) published; ours in the fvcore convention (analytic = fvcore, above)."""
    assert analytic_gflops(videoats.create_model("psvit_b18_224")) == pytest.approx(8.8, rel=0.01)
    assert analytic_gflops(videoats.create_model("psvit_b14_224")) == pytest.approx(5.4, rel=0.01)


# ----------------------------------------------------------------------------------------------- ATS

@pytest.fixture(scope="module")
def peaked():
    torch.manual_seed(0)
    return peaky(videoats.create_model(TINY).eval(), std=0.3)


def _ats(model, **kw):
    return apply_ats(copy.deepcopy(model), dict(blocks=[1, 2, 3], tokens=0.5, **kw))


def test_pruned_static_and_masked_keep_the_same_tokens_and_logits(peaked):
    masks = assert_pruned_equals_masked(lambda mode, drop: _ats(peaked, mode=mode, drop_tokens=drop), images(),
                                        (1, 2, 3))
    counts = {b: m.flatten(1).sum(dim=1) for b, m in masks.items()}
    assert int(counts[3].max()) < int(counts[1].max()) < 36


@pytest.mark.parametrize("drop", [True, False])
def test_keeping_every_token_equals_the_dense_model(peaked, drop, monkeypatch):
    monkeypatch.setattr(ats_stage, "inverse_transform_sample", keep_every_candidate)
    x = images()
    with torch.no_grad():
        dense = peaked(x)
        model = _ats(peaked, drop_tokens=drop)
        sampled = model(x)
    assert (dense - sampled).abs().max() < 1e-5
    if drop:  # the dense count plus the CLS scoring row (1 + 36 keys, 64 wide) in each of the three ATS blocks
        assert sample_gflops(model, x).tolist() == pytest.approx(
            [analytic_gflops(peaked) + 3 * 37 * 64 / 1e9] * 3, rel=1e-12)


def test_gflops_per_sample_padded_and_traced_agree(peaked):
    model = _ats(peaked)
    x = images(1)
    traced = fvcore_count(model, x).gflops
    assert float(sample_gflops(model, x)[0]) == pytest.approx(traced, rel=1e-9)
    assert padded_gflops(model, x) == pytest.approx(traced, rel=1e-9)
    static = _ats(peaked, mode="static")
    xb = images(3)
    traced = fvcore_count(static, xb).gflops  # the trace runs the forward: the record is this batch's
    assert padded_gflops(static, xb) == pytest.approx(traced, rel=1e-9)
    assert bool((sample_gflops(static, xb) < analytic_gflops(peaked)).all())


def test_static_mode_compiles_as_one_graph_and_the_compiled_sampler_keeps_the_eager_tokens(peaked, capture_only):
    model = _ats(peaked, mode="static")
    x = images(2)
    with torch.no_grad():
        eager = model(x)
        assert torch.equal(torch.compile(model, fullgraph=True, backend="eager")(x), eager)
    torch._dynamo.reset()
    compiled = _ats(peaked, sampler="compiled")
    reference = _ats(peaked)
    with torch.no_grad():
        assert (compiled(x) - reference(x)).abs().max() < 1e-5
    for block in (1, 2, 3):
        assert torch.equal(token_masks(compiled)[block], token_masks(reference)[block])


@pytest.mark.parametrize("mode,autocast", [("static", False), ("trim", True)], ids=["static-fp32", "trim-bf16"])
def test_forward_stays_on_cuda(peaked, mode, autocast, monkeypatch):
    """On a fake CUDA device (tests/test_fake_cuda.py): every tensor the grid code makes follows the input, bf16
    autocast runs through, and the fake pass takes the CPU pass's layout; the masked training pass too."""
    # cuDNN's grid sampler (what grid_sample picks on a GPU) has no fake kernel: the native one stands in for it
    with torch.backends.cudnn.flags(enabled=False):
        replayed_on_fake_cuda(_ats(peaked, mode=mode), images(), autocast, monkeypatch)
        if mode == "trim" and autocast:
            assert fake_cuda_run(_ats(peaked).train(), images(), autocast=True).device.type == "cuda"
