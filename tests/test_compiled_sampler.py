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
from videoats.ats import token_masks
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


# What the compiled stage may still dispatch as aten ops beyond the dense blocks': library kernels inductor calls
# out to (sorting, scans, searches, gathers and scatters) and allocations and views. Every arithmetic,
# comparison or reduction of the sampler and the layout is fused into the graph's own kernels.
EXTERN_OR_VIEW = {"sort", "argsort", "topk", "cumsum", "searchsorted", "nonzero", "nonzero_static", "gather",
                  "index_select", "index_copy_", "index_put_", "scatter_", "scatter_add_", "scatter_reduce_",
                  "cat", "reshape", "view", "_unsafe_view", "slice", "select", "expand", "alias", "unsqueeze",
                  "squeeze", "permute", "transpose", "as_strided", "contiguous", "clone", "copy_", "empty",
                  "empty_strided", "new_empty", "new_empty_strided", "zeros", "new_zeros", "arange",
                  "resize_", "lift_fresh", "resolve_conj", "resolve_neg"}


@pytest.mark.parametrize("variant,mode", [("tube", "trim"), ("frame", "static"), ("joint", "static")])
def test_inductor_sampler_keeps_the_eager_tokens_and_fuses_its_arithmetic(variant, mode):
    """The generated code itself (C++ here, Triton on CUDA), on the default variant, a ragged static one, and
    the one that does the most (`joint` `static`, whose token-wise layers gather a padded count): the same
    tokens; under half the eager sampler's aten ops per stage; and, whatever the torch version's op counts,
    no arithmetic, comparison or reduction of the sampler left outside the graph (a stage that fell back to
    eager, wholly or at a graph break, dispatches its `mul`, `sub`, `sum`, `where`... one by one)."""
    torch._dynamo.reset()
    eager, compiled = _pair("timesformer_tiny_8x32", variant, mode)
    dense = apply_ats(peaky(videoats.create_model("timesformer_tiny_8x32").eval()), None)
    x = _input(eager)
    _agree(eager, compiled, x)
    with torch.no_grad():
        dense(x)
        counts = [profile_ops(lambda: net(x)) for net in (dense, eager, compiled)]
    per_stage = [(c.ops - counts[0].ops) / len(BLOCKS) for c in counts[1:]]
    assert 0 < per_stage[1] < 0.5 * per_stage[0], per_stage
    beyond_dense = {op for op, n in counts[2].by_op.items() if n > counts[0].by_op.get(op, 0)}
    assert beyond_dense <= EXTERN_OR_VIEW, sorted(beyond_dense - EXTERN_OR_VIEW)


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


def test_sampler_option_is_checked_and_read_from_the_config(capture_only):
    """ATS.SAMPLER reaches the model: `compiled` captures graphs on the first forward pass, `eager` none."""
    with pytest.raises(VideoATSError, match="unknown ATS sampler 'fused'; choose one of eager, compiled"):
        apply_ats(videoats.create_model("timesformer_tiny_8x32"), dict(blocks=[1], sampler="fused"))
    graphs = {}
    for sampler in ("eager", "compiled"):
        cfg = get_cfg()
        cfg.merge_from_list(["ATS.ENABLE", "True", "ATS.BLOCKS", "[1]", "ATS.SAMPLER", sampler])
        model = apply_ats(videoats.create_model("timesformer_tiny_8x32").eval(), ats_from_cfg(cfg))
        torch._dynamo.reset()
        counters.clear()
        with torch.no_grad():
            model(video(1))
        graphs[sampler] = counters["stats"]["unique_graphs"]
    assert graphs["eager"] == 0 < graphs["compiled"], graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant,mode", [("tube", "trim"), ("joint", "static")])
def test_cuda_compiled_sampler_keeps_the_eager_tokens(variant, mode):
    """Inductor's Triton kernels against the eager CUDA sampler."""
    torch._dynamo.reset()
    eager, compiled = _pair("timesformer_tiny_8x32", variant, mode)
    _agree(eager.cuda(), compiled.cuda(), _input(eager).cuda())
