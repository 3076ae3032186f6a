"""`sampler="compiled"` (issue #13): each ATS stage's scoring, sampling and layout planning as one compiled
graph, so an eager model launches a few fused kernels per stage instead of about a hundred small ops.

The eager functions are the reference: the compiled ones must keep exactly their tokens and give their
logits, in every variant and layout. Graph capture (fullgraph, dynamic shapes) is checked across variants and
layouts with dynamo's "eager" backend, which captures the same graph without compiling it (fast); inductor's
generated code is checked on the default variant. Op counts are properties of the code, counted on the CPU.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import videoats
from videoats import apply_ats
from videoats.ats import stage, token_masks
from videoats.config import ats_from_cfg, get_cfg
from videoats.errors import VideoATSError
from videoats.profiling import count_ops, profile_ops

from test_ats import peaky, video
from test_static import BLOCKS, _input, _model


def _pair(name, variant, mode):
    """The same model (same weights) with the eager and the compiled sampler."""
    return [_model(name, variant, mode, sampler=sampler) for sampler in ("eager", "compiled")]


def _agree(eager, compiled, x):
    with torch.no_grad():
        expected, got = eager(x), compiled(x)
    for block in BLOCKS:
        assert torch.equal(token_masks(compiled)[block], token_masks(eager)[block]), block
    assert (got - expected).abs().max() < 1e-5
    return token_masks(eager)


@pytest.fixture
def capture_only(monkeypatch):
    monkeypatch.setattr(stage, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# every variant, both layouts, both backbones' layers (ragged and aligned)
SWEEP = [("timesformer_tiny_8x32", "tube", "static"), ("timesformer_tiny_8x32", "frame", "trim"),
         ("timesformer_tiny_8x32", "joint", "static"), ("xvit_tiny_8x32", "joint", "trim"),
         ("xvit_tiny_8x32", "frame", "static"), ("deit_tiny_patch8_32", "image", "trim")]


@pytest.mark.parametrize("name,variant,mode", SWEEP)
def test_compiled_sampler_keeps_the_eager_tokens(capture_only, name, variant, mode):
    eager, compiled = _pair(name, variant, mode)
    for batch in (3, 2):  # a second shape reuses the dynamic graph
        masks = _agree(eager, compiled, _input(eager, batch))
    assert any(int(m.sum()) < m.numel() for m in masks.values())  # ATS did drop tokens


@pytest.mark.parametrize("mode", ["trim", "static"])
def test_new_batch_sizes_and_widths_compile_nothing_more(capture_only, mode):
    """The stage functions compile with dynamic shapes: once the first batches have made their graphs, other
    batch sizes and kept counts reuse them (a value of the grid's size in a graph, such as a fill value, fixed
    it and compiled again for every batch)."""
    _, compiled = _pair("timesformer_tiny_8x32", "joint", mode)
    counters.clear()
    with torch.no_grad():
        for batch in (2, 3, 4):
            compiled(video(batch, seed=batch))
        first = counters["stats"]["unique_graphs"]
        for batch in (5, 6, 7):
            compiled(video(batch, seed=batch))
    assert 0 < first == counters["stats"]["unique_graphs"]


def test_compiled_sampler_in_training_masks_alike(capture_only):
    eager, compiled = _pair("timesformer_tiny_8x32", "joint", "trim")
    eager.train(), compiled.train()
    x = video(2)
    torch.manual_seed(1)
    loss_e = eager(x).sum()
    torch.manual_seed(1)
    loss_c = compiled(x).sum()
    loss_e.backward(), loss_c.backward()
    for block in BLOCKS:
        assert torch.equal(token_masks(compiled)[block], token_masks(eager)[block])
    for (name, pe), pc in zip(eager.named_parameters(), compiled.parameters()):
        if pe.grad is not None:
            assert torch.allclose(pe.grad, pc.grad, atol=1e-6), name


@pytest.mark.parametrize("variant,mode,most", [("tube", "trim", 40), ("frame", "static", 40), ("joint", "static", 50)])
def test_inductor_sampler_keeps_the_eager_tokens_with_few_ops(variant, mode, most):
    """The generated code itself (C++ here, Triton on CUDA), on the default variant, a ragged static one, and
    the one that does the most (`joint` `static`, whose token-wise layers gather a padded count): the same
    tokens, and at most the 40 aten ops per stage beyond the dense blocks' that issue #13 asks for. `joint`
    `static` spends about 4 more per layer (views included) on gathering the present tokens, which saves
    43% of its FLOPs (README)."""
    torch._dynamo.reset()
    eager, compiled = _pair("timesformer_tiny_8x32", variant, mode)
    dense = apply_ats(peaky(videoats.create_model("timesformer_tiny_8x32").eval()), None)
    x = _input(eager)
    _agree(eager, compiled, x)
    with torch.no_grad():
        dense(x)
        ops = [profile_ops(lambda: net(x)).ops for net in (dense, eager, compiled)]
    per_stage = [(n - ops[0]) / len(BLOCKS) for n in ops[1:]]
    # measured with torch 2.14: eager 141 (tube, trim), 165 (frame, static) and 199 (joint, static) ops per
    # stage, compiled 23, 21 and 48; the graphs do the sampler's and the layout's work in a few kernels, the
    # blocks only gather
    assert 0 < per_stage[1] <= most and per_stage[1] < 0.5 * per_stage[0], per_stage


def test_op_counters_and_traces_run_the_eager_reference(capture_only):
    """A compiled function cannot run under a Python dispatch mode: the counters see the eager sampler, whose
    host reads are the compiled one's (the graph reads nothing), instead of an error."""
    eager, compiled = _pair("timesformer_tiny_8x32", "frame", "trim")
    x = _input(eager)
    with torch.no_grad():
        with count_ops() as e:
            eager(x)
        with count_ops() as c:
            compiled(x)
    assert c.host_reads == e.host_reads == len(BLOCKS)


def test_a_model_compiled_whole_inlines_the_compiled_sampler(capture_only):
    eager, compiled = _pair("timesformer_tiny_8x32", "joint", "static")
    whole = torch.compile(compiled, fullgraph=True, backend="eager")
    x = _input(eager)
    with torch.no_grad():
        assert (whole(x) - eager(x)).abs().max() < 1e-5


def test_sampler_option_is_checked_and_read_from_the_config():
    with pytest.raises(VideoATSError, match="unknown ATS sampler 'fused'; choose one of eager, compiled"):
        apply_ats(videoats.create_model("timesformer_tiny_8x32"), dict(blocks=[1], sampler="fused"))
    cfg = get_cfg()
    cfg.merge_from_list(["ATS.ENABLE", "True", "ATS.BLOCKS", "[1]", "ATS.SAMPLER", "compiled"])
    assert ats_from_cfg(cfg)["sampler"] == "compiled"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant,mode", [("tube", "trim"), ("joint", "static")])
def test_cuda_compiled_sampler_keeps_the_eager_tokens(variant, mode):
    """Inductor's Triton kernels against the eager CUDA sampler."""
    torch._dynamo.reset()
    eager, compiled = _pair("timesformer_tiny_8x32", variant, mode)
    _agree(eager.cuda(), compiled.cuda(), _input(eager).cuda())
