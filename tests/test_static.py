"""ATS without waiting for the device (issue #13): the `static` and `trim` pruned layouts.

`static` fixes every stage's width from the budget, so a forward pass reads nothing back from the device
and compiles whole; `trim` pads to the batch's largest count, read once per stage. Both must keep the
tokens the masked layout keeps and give its logits; the counts of host reads are properties of the code,
so they are checked on the CPU exactly.
"""
from __future__ import annotations

import pytest
import torch

import videoats
from videoats import apply_ats
from videoats.ats import kept_tokens, token_masks
from videoats.ats.sampler import _linspace_rows, host_draws, inverse_transform_sample, max_kept, num_samples
from videoats.ats.stage import present_rows
from videoats.flops import fvcore_count, padded_gflops, sample_gflops
from videoats.models.layers import tokenwise
from videoats.profiling import count_ops

from test_ats import peaky, video

CASES = [("timesformer_tiny_8x32", "tube"), ("timesformer_tiny_8x32", "frame"), ("timesformer_tiny_8x32", "joint"),
         ("xvit_tiny_8x32", "tube"), ("xvit_tiny_8x32", "frame"), ("xvit_tiny_8x32", "joint"),
         ("deit_tiny_patch8_32", "image")]
BLOCKS = [1, 2, 3]


def _model(name, variant, mode, tokens=0.6, drop=True, sampler="eager"):
    torch.manual_seed(0)
    model = peaky(videoats.create_model(name).eval())
    return apply_ats(model, dict(blocks=BLOCKS, tokens=tokens, variant=variant, mode=mode, drop_tokens=drop,
                                 sampler=sampler))


def _input(model, batch=3):
    return video(batch) if model.is_video else torch.randn(batch, 3, 32, 32,
                                                           generator=torch.Generator().manual_seed(1))


def assert_pruned_equals_masked(build, x, blocks, logits_tol=1e-4, bf16=False) -> dict:
    """`build(mode, drop_tokens)` makes the model: its pruned layouts (trim, static) must keep exactly the
    masked layout's tokens at every block of `blocks` and, unless `logits_tol` is None, give its logits (bf16:
    under CPU autocast). Returns the masked run's stage masks."""
    outputs, masks = {}, {}
    for mode, drop in (("trim", False), ("trim", True), ("static", True)):
        model = build(mode, drop)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs[mode, drop] = model(x)
        masks[mode, drop] = token_masks(model)
    for key in (("trim", True), ("static", True)):
        if logits_tol is not None:
            assert (outputs[key] - outputs["trim", False]).abs().max() < logits_tol, key
        for block in blocks:
            assert torch.equal(masks[key][block], masks["trim", False][block]), (key, block)
    return masks["trim", False]


@pytest.mark.parametrize("name,variant", CASES)
def test_static_and_trim_keep_the_masked_tokens_and_logits(name, variant):
    masks = assert_pruned_equals_masked(lambda mode, drop: _model(name, variant, mode, drop=drop),
                                        _input(_model(name, variant, "trim")), BLOCKS)
    assert any(int(m.sum()) < m.numel() for m in masks.values())  # ATS did drop tokens


@pytest.mark.parametrize("name,variant", CASES)
def test_host_reads_static_none_trim_one_per_stage(name, variant):
    for mode, most in (("static", 0), ("trim", len(BLOCKS))):
        model = _model(name, variant, mode)
        x = _input(model)
        with torch.no_grad(), count_ops() as count:
            model(x)
        assert count.host_reads <= most, (mode, count.host_reads)
        if mode == "trim":  # and the trim layout does read: it is the adaptive width
            assert count.host_reads == len(BLOCKS)


def test_dense_forward_reads_nothing_and_the_counter_sees_reads():
    model = videoats.create_model("timesformer_tiny_8x32").eval()
    with torch.no_grad(), count_ops() as count:
        out = model(video(1))
    assert count.host_reads == 0 and count.ops > 100
    with count_ops() as count:
        out.tolist(), int(out.argmax()), bool(out.isfinite().all()), out.nonzero()
    assert count.host_reads == 4


@pytest.mark.parametrize("name,variant", [("timesformer_tiny_8x32", "joint"), ("xvit_tiny_8x32", "frame"),
                                          ("deit_tiny_patch8_32", "image")])
def test_static_mode_compiles_as_one_graph(name, variant):
    torch._dynamo.reset()
    model = _model(name, variant, "static")
    x = _input(model, 2)
    with torch.no_grad():
        eager = model(x)
        kept = {b: k.clone() for b, k in kept_tokens(model).items()}
        # fullgraph: any graph break (a host read, an untraceable call) is an error; the eager backend runs
        # the captured graph as it is, so this checks the capture without minutes of code generation
        compiled = torch.compile(model, fullgraph=True, backend="eager")(x)
    assert torch.equal(compiled, eager)
    assert {b: k.tolist() for b, k in kept_tokens(model).items()} == {b: k.tolist() for b, k in kept.items()}


@pytest.mark.parametrize("variant", ["tube", "frame", "joint"])
def test_static_padded_count_is_what_the_batch_computes(variant):
    model = _model("timesformer_tiny_8x32", variant, "static")
    x = _input(model)
    traced = fvcore_count(model, x).gflops  # runs the forward: the trace is this batch's
    assert padded_gflops(model, x) == pytest.approx(traced, rel=1e-9)
    assert float(sample_gflops(model, x).max()) < traced  # static pads more than any sample keeps


@pytest.mark.parametrize("tokens,slots,expected", [
    (0.7, 196, 137),   # round(0.7 * 197) = 138 tokens with the CLS: 137 patches
    (1.0, 196, 196),   # a budget that never binds keeps at most every candidate
    (50, 196, 49),     # a count: 50 with the CLS
    (500, 196, 196),   # a count above the row: all
    (0.01, 196, 7),    # at least min_tokens (8) with the CLS
    (0.5, 30, 15),     # round(0.5 * 31) = 16 (half to even, as torch.round)
    (0.5, 4, 4),       # min_tokens 8 covers the whole row
])
def test_static_width_by_hand(tokens, slots, expected):
    assert max_kept(tokens, slots, min_tokens=8) == expected


def test_static_width_bounds_every_kept_count():
    model = _model("timesformer_tiny_8x32", "frame", "trim", tokens=0.5)
    for seed in range(3):
        with torch.no_grad():
            model(video(4, seed=seed))
        width = 16
        for record in model.ats_trace:
            width = max_kept(0.5, width, 8)
            assert int(record.mask.sum(dim=2).max()) <= width


def test_static_joint_computes_token_wise_layers_on_the_clips_bound_only():
    """A `joint` frame may keep every location, so the static grid stays 16 wide; token-wise layers compute
    only the most a clip can keep: round(0.6 * 129) = 77 tokens with the CLS, 76 patches; then 45, 27."""
    model = _model("timesformer_tiny_8x32", "joint", "static")
    for seed in range(3):
        with torch.no_grad():
            model(video(4, seed=seed))
        assert [(r.padded_slots, r.rows) for r in model.ats_trace] == [(16, 76), (16, 45), (16, 27)]
        assert all(int(r.kept.max()) <= r.rows for r in model.ats_trace)


def test_present_rows_by_hand_and_the_padded_gather_computes_only_them():
    mask = torch.tensor([[True, False], [True, False], [False, False]])  # rows 0 and 2 of 6 present
    assert present_rows(mask).read.tolist() == [0, 2]  # masked layout: found on the device
    exact = present_rows(mask, 2)  # trim: the count came with the widths
    assert exact.read.tolist() == exact.write.tolist() == [0, 2] and not exact.scratch
    padded = present_rows(mask, 4, bounded=True)  # static: padded to a bound, reading row 0, writing to a
    assert padded.read.tolist() == [0, 2, 0, 0] and padded.write.tolist() == [1, 3, 0, 0] and padded.scratch
    x = torch.arange(1.0, 7.0).reshape(3, 2, 1)
    for rows in (exact, padded):  # scratch row 0 before the grid's, which is dropped
        assert tokenwise(lambda z: z * 10 + 1, x, rows).flatten().tolist() == [11, 0, 31, 0, 0, 0]


def test_per_row_targets_match_one_count_at_a_time():
    g = torch.Generator().manual_seed(0)
    rows = torch.rand(12, 40, generator=g) ** 3  # real-valued: no exact ties
    counts = torch.tensor([3, 10, 39, 60] * 3)
    index, keep = inverse_transform_sample(rows, counts, width=60)
    for r in range(len(rows)):
        one_index, one_keep = inverse_transform_sample(rows[r:r + 1], int(counts[r]))
        assert sorted(index[r][keep[r]].tolist()) == sorted(one_index[0][one_keep[0]].tolist()), r


def test_linspace_rows_equal_torch_linspace_to_the_last_bit_or_one_ulp():
    counts = torch.arange(2, 300)
    rows = _linspace_rows(counts, 300)
    for c, row in zip(counts.tolist(), rows):
        ref = torch.linspace(0, 1.0, c)
        assert (row[:c] - ref).abs().max() <= 1.2e-7 and not row[c:].any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name,variant", CASES)
@pytest.mark.parametrize("mode", ["static", "trim"])
def test_cuda_keeps_the_cpu_tokens_and_reads_as_little(name, variant, mode):
    model = _model(name, variant, mode)
    x = _input(model)
    with torch.no_grad():
        cpu = model(x)
        cpu_masks = token_masks(model)
        model.cuda()
        with count_ops() as count:
            gpu = model(x.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model(x.cuda())
    assert (gpu.cpu() - cpu).abs().max() < 1e-3
    assert all(torch.equal(m.cpu(), cpu_masks[b]) for b, m in token_masks(model).items())
    assert count.host_reads <= (0 if mode == "static" else len(BLOCKS))
    assert torch.isfinite(half).all()


def test_host_draws_equal_the_tensor_rule():
    for tokens in (0.3, 0.5, 0.7, 0.9, 1.0, 17, 50, 197, 500):
        for present in range(2, 400, 7):
            for least in (1, 8):
                assert host_draws(tokens, present, 197, least) == \
                    int(num_samples(tokens, torch.tensor([present]), 197, least)[0]), (tokens, present, least)
