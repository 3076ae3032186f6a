"""CvT: the Hugging Face port (with the official QuickGELU swapped in) as an independent oracle of our logits,
the official key names, the fvcore GFLOPs convention, and ATS in the last stage in every mode."""
import copy

import pytest
import torch

import videoats
from videoats import apply_ats
from videoats.ats import kept_tokens, token_masks
from videoats.ats import stage as ats_stage
from videoats.checkpoint import detect_layout, from_hf_cvt, load_checkpoint, to_hf_cvt
from videoats.flops import analytic_gflops, fvcore_count, padded_gflops, sample_gflops
from videoats.models.cvt import QuickGELU, key_corners

from test_ats import keep_every_candidate, peaky
from test_fake_cuda import fake_cuda_run, replayed_on_fake_cuda
from test_static import assert_pruned_equals_masked

TINY = "cvt_tiny_96"


def images(batch=3, size=96, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def randomized(name=TINY, seed=0, **kw):
    """Every tensor random (BatchNorm statistics included), so that no mapping error hides behind an init."""
    torch.manual_seed(seed)
    model = videoats.create_model(name, **kw).eval()
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                v.copy_(torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v) * 0.2)
    return model


# ------------------------------------------------------------------------------------------- layouts

def test_hugging_face_port_gives_our_logits_at_two_sizes(tmp_path):
    """HF's CvtForImageClassification, loaded with our weights renamed (to_hf_cvt) and its exact GELU swapped for
    the official QuickGELU, computes our logits; its folder (safetensors + config) loads back into ours."""
    transformers = pytest.importorskip("transformers")
    ours = randomized(depths=(1, 2, 3))  # HF's drop-path list needs depth[i] > i
    config = transformers.CvtConfig(embed_dim=[16, 32, 64], num_heads=[1, 2, 4], depth=[1, 2, 3], num_labels=10)
    hf = transformers.CvtForImageClassification(config).eval()
    hf.load_state_dict(to_hf_cvt(ours.state_dict()), strict=True)
    for layer in hf.modules():
        if type(layer).__name__ == "CvtIntermediate":
            layer.activation = QuickGELU()
    for size in (96, 80):
        x = images(2, size)
        with torch.no_grad():
            assert (hf(x).logits - ours(x)).abs().max() < 1e-4, size
    hf.save_pretrained(tmp_path / "hf")
    back = videoats.create_model(TINY, depths=(1, 2, 3)).eval()
    report = load_checkpoint(back, tmp_path / "hf")
    assert report.source_format == "hf_cvt"
    with torch.no_grad():
        assert torch.equal(back(images(2)), ours(images(2)))


def test_our_keys_are_the_official_ones():
    """The official cls_cvt.py names (hand-listed for one block of the CLS stage) and its entry count for
    CvT-21 (731: parameters and BatchNorm buffers); a renamed module would fail here."""
    sd = videoats.create_model("cvt_21_384").state_dict()
    assert len(sd) == 731
    block = "stage2.blocks.15."
    expected = [f"{block}attn.conv_proj_{x}.{p}" for x in "qkv" for p in
                ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked")]
    expected += [f"{block}attn.proj_{x}.{p}" for x in "qkv" for p in ("weight", "bias")]
    expected += [f"{block}{m}.{p}" for m in ("attn.proj", "norm1", "norm2", "mlp.fc1", "mlp.fc2")
                 for p in ("weight", "bias")]
    assert sorted(k for k in sd if k.startswith(block)) == sorted(expected)
    for k in ("stage0.patch_embed.proj.weight", "stage1.patch_embed.norm.bias", "stage2.cls_token", "norm.weight",
              "head.weight"):
        assert k in sd
    assert sd["stage0.patch_embed.proj.weight"].shape == (64, 3, 7, 7)
    assert sd["stage2.blocks.0.attn.conv_proj_k.conv.weight"].shape == (384, 1, 3, 3)
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) == 31_622_696
    assert detect_layout(sd) == "cvt_official"
    assert detect_layout(to_hf_cvt(sd)) == "hf_cvt"
    assert from_hf_cvt(to_hf_cvt(sd)).keys() == sd.keys()


def test_official_layout_file_round_trip(tmp_path):
    ours = randomized()
    torch.save(ours.state_dict(), tmp_path / "cvt.pth")
    back = videoats.create_model(TINY).eval()
    assert load_checkpoint(back, tmp_path / "cvt.pth").source_format == "cvt_official"
    with torch.no_grad():
        assert torch.equal(back(images()), ours(images()))


# -------------------------------------------------------------------------------------------- GFLOPs

@pytest.mark.parametrize("size", [96, 100])
def test_analytic_equals_fvcore(size):
    """The analytic terms (convolutions, BatchNorm, key/value grid, attention pairs) against fvcore's trace, at
    the native size and at one whose stages round down."""
    model = videoats.create_model(TINY).eval()
    assert analytic_gflops(model, (3, size, size)) == pytest.approx(fvcore_count(model, images(1, size)).gflops,
                                                                    rel=1e-12)


def test_cvt_21_384_is_the_published_count():
    """24.9 GFLOPs published (fvcore convention: ours traced equals this analytic figure, test above)."""
    assert analytic_gflops(videoats.create_model("cvt_21_384")) == pytest.approx(24.9, rel=0.01)


# ----------------------------------------------------------------------------------------------- ATS

def test_scoring_corners_by_hand():
    """Key i (stride 2) is centred on location 2 i: location 0 -> key 0 alone, 1 -> keys 0 and 1, 5 of 6 -> the
    last key (2) alone; on a 6 x 6 grid (3 x 3 keys), location (1, 4) = 10 lies between keys (0, 2), (1, 2)."""
    corners = key_corners(6, 6, 2, "cpu")
    assert corners[:, 0].tolist() == [0, 0, 0, 0]
    assert corners[:, 1].tolist() == [0, 1, 0, 1]
    assert corners[:, 5].tolist() == [2, 2, 2, 2]
    assert sorted(set(corners[:, 10].tolist())) == [2, 5]


def _ats(model, **kw):
    return apply_ats(copy.deepcopy(model), dict(blocks=[1, 2, 3], tokens=0.5, **kw))


@pytest.fixture(scope="module")
def peaked():
    torch.manual_seed(0)
    return peaky(videoats.create_model(TINY).eval(), std=0.3)


def test_under_bf16_autocast_the_modes_keep_the_same_tokens(peaked):
    """The tie-break of an even grid's last row and column holds at the GPU's default precision too (a bf16
    factor rounds to 1, which left the tied windows to the sort's whim: masked and pruned then differed)."""
    masks = assert_pruned_equals_masked(lambda mode, drop: _ats(peaked, mode=mode, drop_tokens=drop),
                                        images(size=128), (1, 2, 3), logits_tol=None, bf16=True)
    assert any(int(m.sum()) < m.numel() for m in masks.values())


def test_pruned_static_and_masked_keep_the_same_tokens_and_logits(peaked):
    """Kept tokens go back to a zero-filled grid and absent keys are masked: the pruned layouts (trim, static)
    compute the masked layout's function, token for token."""
    masks = assert_pruned_equals_masked(lambda mode, drop: _ats(peaked, mode=mode, drop_tokens=drop), images(),
                                        (1, 2, 3))
    counts = {b: m.flatten(1).sum(dim=1) for b, m in masks.items()}
    assert int(counts[3].max()) < int(counts[1].max()) < 36


def test_a_sample_does_not_depend_on_its_batch(peaked):
    model = _ats(peaked)
    x = images(4)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(4)])
    assert (together - alone).abs().max() < 1e-4


@pytest.mark.parametrize("drop", [True, False])
def test_keeping_every_token_equals_the_dense_model(peaked, drop, monkeypatch):
    monkeypatch.setattr(ats_stage, "inverse_transform_sample", keep_every_candidate)
    x = images()
    with torch.no_grad():
        dense = peaked(x)
        model = _ats(peaked, drop_tokens=drop)
        sampled = model(x)
    assert (dense - sampled).abs().max() < 1e-5
    assert all((c == 36).all() for c in kept_tokens(model).values())
    if drop:  # the dense count plus a CLS scoring row (1 + 36 keys, 64 wide) in each of the three ATS blocks
        assert sample_gflops(model, x).tolist() == pytest.approx(
            [analytic_gflops(peaked) + 3 * 37 * 64 / 1e9] * 3, rel=1e-12)


def test_gflops_per_sample_padded_and_traced_agree(peaked):
    """At batch 1 the per-sample count, the padded count and fvcore's trace of the pruned forward are one
    figure; over a batch, padding costs more than the mean sample, and every sample less than dense."""
    model = _ats(peaked)
    x = images(1)
    traced = fvcore_count(model, x).gflops  # the trace runs the forward: the record is this input's
    assert float(sample_gflops(model, x)[0]) == pytest.approx(traced, rel=1e-9)
    assert padded_gflops(model, x) == pytest.approx(traced, rel=1e-9)
    static = _ats(peaked, mode="static")
    xb = images(3)
    traced = fvcore_count(static, xb).gflops
    assert padded_gflops(static, xb) == pytest.approx(traced, rel=1e-9)
    per = sample_gflops(static, xb)
    assert float(per.mean()) <= traced and bool((per < analytic_gflops(peaked)).all())


def test_static_mode_compiles_as_one_graph(peaked):
    torch._dynamo.reset()
    model = _ats(peaked, mode="static")
    x = images(2)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="eager")(x)
    assert torch.equal(compiled, eager)


def test_compiled_sampler_keeps_the_eager_tokens(peaked, capture_only):
    x = images()
    eager, compiled = _ats(peaked), _ats(peaked, sampler="compiled")
    with torch.no_grad():
        a, b = eager(x), compiled(x)
    assert (a - b).abs().max() < 1e-5
    for block in (1, 2, 3):
        assert torch.equal(token_masks(eager)[block], token_masks(compiled)[block])
    torch._dynamo.reset()


def test_training_masks_and_gradients_reach_the_sampled_blocks(peaked):
    model = _ats(peaked).train()
    loss = model(images(2)).logsumexp(dim=1).sum()
    loss.backward()
    grads = [p.grad for p in model.stage2.blocks[3].parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(int(m.sum()) < m.numel() for m in token_masks(model).values())


@pytest.mark.parametrize("mode,autocast", [("static", False), ("trim", True)], ids=["static-fp32", "trim-bf16"])
def test_forward_stays_on_cuda(peaked, mode, autocast, monkeypatch):
    """On a fake CUDA device (tests/test_fake_cuda.py): every tensor the grid code makes follows the input, bf16
    autocast runs through, and the fake pass takes the CPU pass's layout; the masked training pass too."""
    replayed_on_fake_cuda(_ats(peaked, mode=mode), images(), autocast, monkeypatch)
    if mode == "trim" and autocast:
        assert fake_cuda_run(_ats(peaked).train(), images(), autocast=True).device.type == "cuda"


def test_absent_keys_are_left_out_as_a_cropped_grid_computes(peaked, monkeypatch):
    """ATS keeps exactly the top-left 2 x 2 tokens of the 6 x 6 grid at block 1. Block 2 then sees a zero-filled
    grid whose present keys are the four stride-2 windows over rows/columns -1..3; the other five keys (a
    BatchNorm bias alone) must not be attended. Re-stated by hand: the block on a 4 x 4 crop holding the kept
    tokens (normed) and zeros, where those four windows are all the keys there are. A block that let the empty
    windows' keys in, or put the tokens back at the wrong locations, fails."""
    kept_locations = [0, 1, 6, 7]

    def keep_corner(scores, n_samples, present=None, width=None):
        r = scores.shape[0]
        return torch.tensor(kept_locations).expand(r, 4), torch.ones(r, 4, dtype=torch.bool)

    monkeypatch.setattr(ats_stage, "inverse_transform_sample", keep_corner)
    model = apply_ats(copy.deepcopy(peaked), dict(blocks=[1], tokens=1.0))
    block, seen = model.stage2.blocks[2], {}
    run_block = block.forward_cls

    def recorded(xs, *args):
        seen["x"], seen["out"] = xs, run_block(xs, *args)[0]
        return run_block(xs, *args)

    block.forward_cls = recorded
    with torch.no_grad():
        model(images(1))
        xs, out = seen["x"], seen["out"]  # (1, 1 + 4, C): the CLS, then the kept tokens in location order
        a = block.attn
        y = block.norm1(xs)
        crop = torch.zeros(1, 64, 4, 4)
        for slot, loc in enumerate(kept_locations):
            crop[0, :, loc // 6, loc % 6] = y[0, 1 + slot]
        q = a.conv_proj_q(crop)[:, [0, 1, 4, 5]]  # the kept locations on the 4 x 4 crop
        k, v = a.conv_proj_k(crop), a.conv_proj_v(crop)  # (1, 4, C): the four windows
        q = a.heads(a.proj_q(torch.cat([y[:, :1], q], dim=1)))
        k = a.heads(a.proj_k(torch.cat([y[:, :1], k], dim=1)))
        v = a.heads(a.proj_v(torch.cat([y[:, :1], v], dim=1)))
        attn = ((q @ k.transpose(-2, -1)) * a.scale).softmax(dim=-1)
        z = xs + a.proj((attn @ v).transpose(1, 2).reshape(1, 5, 64))
        expected = z + block.mlp(block.norm2(z))
    assert out.shape == (1, 5, 64)
    assert (out - expected).abs().max() < 1e-4
