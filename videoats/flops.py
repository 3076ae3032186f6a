"""GFLOPs accounting that reproduces the published tables and stays honest for adaptive (ATS) models.

Convention (the one the TimeSformer, X-ViT, ATS and PySlowFast numbers use: fvcore's defaults)
---------------------------------------------------------------------------------------------
- One fused multiply-add is ONE flop (so these are "MACs" in thop/ptflops terms; some tools print 2x).
- Counted: every linear layer (in x out per token, bias free), the patch-embedding convolution, the two
  attention matmuls q.k^T and attn.v (fvcore counts `aten::matmul`; fused
  `aten::scaled_dot_product_attention`, which fvcore does not know, gets a handle here that counts exactly
  those two matmuls), the ATS scoring row q_cls.K^T, LayerNorm as 5 flops per element (fvcore's default,
  included in the published numbers: TimeSformer-L is 2382.5 with it and 2379.9 without), and a
  nearest position-embedding resize as 1 per output element.
- Not counted (fvcore has no handle, so neither do we): GELU, softmax, residual adds, scaling, the
  value norms of the ATS score, the sampling itself (sort, cumsum, search), gathers and scatters,
  bicubic/1-D resizes. They are elementwise and together well under 1% of a ViT.
- The head is counted (it is a linear layer); it is negligible (768 x 600).
- A number is per view (one clip, one crop, batch 1). A "total" is per view x clips x crops: the
  "GFLOPs" column of the video papers is the total (TimeSformer-HR 5110 = 3 x 1703.5, X-ViT 850 ~ 3 x 283).
  We get 196.05 / 1704.42 / 2382.46 per view for TimeSformer / -HR / -L, 4.61 for DeiT-S, and 281.4 for
  X-ViT 16x (0.7% under 850/3; the X-ViT release's extra work is not identified).
- fvcore prices the traced graph, where work whose result is unused is dropped (TimeSformer's last-block
  MLP on patch tokens); eager PyTorch still runs it and the published numbers include it, so our fvcore
  count keeps it (see `_KeepOutputs`).

Two independent counts agree (within 0.5%, usually exactly): `fvcore_count` traces a forward pass,
`analytic_gflops` adds up the same terms from the architecture. The analytic form is what makes the
adaptive count cheap: `sample_gflops` reads the kept-token masks of the last forward (`model.ats_trace`)
and prices every block from each sample's own token counts, with no tracing, so it can run after every
evaluation batch.

What "per sample" and "padded" mean for ATS
-------------------------------------------
Token-wise layers (LayerNorm, qkv, proj, temporal_fc, MLP) run on the present tokens only (they gather
them), so they cost the same in both counts. Attention runs on a padded rectangle: in the pruned layout
every frame of every sample has `padded_slots` slots for spatial attention (the batch maximum of kept
locations, or for the ragged frame/joint layout of kept tokens per frame) and temporal attention runs over
`aligned_slots` locations (the batch maximum of locations kept in some frame); in the masked (training)
layout both are the full grid. `sample_gflops` prices attention on each sample's real tokens: per frame
(1 + n_t)^2 pairs for spatial attention (CLS copy included), per location m_l^2 pairs for TimeSformer's
temporal attention (m_l = frames where that location is present), and in an ATS block the CLS scoring row
(1 + n_t keys) plus (1 + k_t) kept queries against the 1 + n_t keys. `padded_gflops` prices attention on
the rectangle the batch actually computed. At batch 1 with the tube variant the two are equal; the frame
and joint variants pad spatial attention to the frame that kept most and temporal attention to the union
of kept locations even at batch 1.
A sample that keeps every token costs the dense count plus the ATS scoring rows (the CLS row is computed
once to score and again with the kept queries), which is what the code does.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .ats.core import AFTER_ATTENTION, SCORED
from .errors import VideoATSError
from .models.cost import CostSpec, plain_cost as _plain
from .models.registry import family_of

CONVENTION = ("fvcore convention: 1 fused multiply-add = 1 flop; counts linear/conv layers, attention matmuls "
              "(q.k^T, attn.v, the ATS scoring row) and LayerNorm (5/element); GELU, softmax, adds not counted")

# Published per-view GFLOPs (fvcore convention) and the views of the published totals.
PUBLISHED = {
    "timesformer_8x224": dict(per_view=196.1, views=(1, 3), total=590.0,
                              source="TimeSformer paper, 0.59 TFLOPs at 1x3; mmaction2 zoo lists 196G per view"),
    "timesformer_hr_16x448": dict(per_view=1704.5, views=(1, 3), total=5110.0, source="ATS poster, K600 table"),
    "timesformer_l_96x224": dict(per_view=2382.5, views=(1, 3), total=7140.0,
                                 source="TimeSformer paper, 7.14 TFLOPs at 1x3"),
    "xvit_b16_16x224": dict(per_view=850.0 / 3, views=(1, 3), total=850.0, source="ATS poster, K600 table"),
    "deit_small_patch16_224": dict(per_view=4.6, views=(1, 1), total=4.6, source="DeiT / ATS papers"),
    "cvt_21_384": dict(per_view=24.9, views=(1, 1), total=24.9, source="CvT paper / ATS paper"),
    "cvt_13_224": dict(per_view=4.5, views=(1, 1), total=4.5, source="CvT paper"),
    "cvt_21_224": dict(per_view=7.1, views=(1, 1), total=7.1, source="CvT paper"),
    "psvit_b18_224": dict(per_view=8.8, views=(1, 1), total=8.8, source="PS-ViT paper / ATS paper"),
    "psvit_b14_224": dict(per_view=5.4, views=(1, 1), total=5.4, source="PS-ViT paper"),
}

# Ops fvcore leaves out that the convention leaves out too (elementwise, reductions, indexing, sampling).
# Anything else unsupported that looks like a matmul, convolution, attention or normalisation is a hole
# in the count and is reported (and refused when strict).
_HEAVY_HINTS = ("mm", "matmul", "linear", "conv", "einsum", "attention", "_norm", "baddbmm")
_ELEMENTWISE_NORMS = {"aten::linalg_vector_norm", "aten::linalg_norm", "aten::norm", "aten::frobenius_norm"}
_SDPA_OPS = ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
             "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention")


# ---------------------------------------------------------------------------------------------- fvcore


def _sdpa_flop_jit(inputs, outputs) -> int:
    """q.k^T and attn.v as two matmuls, like fvcore prices an unfused attention."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    rows = math.prod(q[:-1])  # (..., heads, queries)
    return rows * k[-2] * q[-1] + rows * k[-2] * v[-1]


class _KeepOutputs(nn.Module):
    """Return every leaf module's output next to the logits, so the trace keeps all of them.

    fvcore prices the traced graph, and tracing drops work whose result is unused (dead-code elimination),
    e.g. TimeSformer's last-block MLP on patch tokens when only the CLS is read. Eager PyTorch still runs
    that work, and the published numbers (from the original code, where CLS and patches share one
    tensor) include it, so the count must too.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._outs = []
        self.added = 0  # clones this wrapper adds to the graph (not the model's own ops)
        self._hooks = [m.register_forward_hook(self._keep) for m in model.modules() if not list(m.children())]

    def _keep(self, module, inputs, output):
        if isinstance(output, Tensor) and output.numel():
            # one element is enough to keep the producer in the graph, and lets the tensor itself be freed
            self._outs.append(output[(0,) * output.dim()].clone())

    def forward(self, x):
        self._outs = []
        out = self.model(x)
        kept, self._outs = tuple(self._outs), []
        self.added = len(kept)
        return (out,) + kept

    def remove(self):
        for h in self._hooks:
            h.remove()


@dataclass
class FvcoreCount:
    gflops: float  # per sample of the traced batch
    batch: int
    by_operator: Dict[str, float]  # GFLOPs per sample by op
    not_counted: Dict[str, int]  # unsupported ops the convention leaves out (name -> calls)
    missing: Dict[str, int]  # unsupported ops that should have been counted (empty when the count is whole)


def fvcore_count(model: nn.Module, inputs: Tensor, strict: bool = True) -> FvcoreCount:
    """Trace one forward pass with fvcore (defaults + an SDPA handle) and split unsupported ops into
    'not counted by convention' and 'missing'; strict refuses a count with holes in it."""
    with warnings.catch_warnings():  # fvcore's own use of torch.jit.script warns on every import: not ours to fix
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    wrapper = _KeepOutputs(model)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(wrapper, (inputs,))
            for name in _SDPA_OPS:
                analysis.set_op_handle(name, _sdpa_flop_jit)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = analysis.total()
            by_op = analysis.by_operator()
            unsupported = analysis.unsupported_ops()
    finally:
        wrapper.remove()
        model.train(was_training)
    missing = {op: n for op, n in unsupported.items()
               if op not in _ELEMENTWISE_NORMS and any(h in op.split("::")[-1] for h in _HEAVY_HINTS)}
    not_counted = {op: n for op, n in unsupported.items() if op not in missing}
    not_counted["aten::clone"] = not_counted.get("aten::clone", 0) - wrapper.added
    if not_counted["aten::clone"] <= 0:
        del not_counted["aten::clone"]
    batch = int(inputs.shape[0])
    if missing and strict:
        raise VideoATSError(f"fvcore cannot count {sorted(missing)} in {type(model).__name__}: the count would "
                            "be too low; add a handle in videoats.flops")
    return FvcoreCount(total / batch / 1e9, batch, {k: v / batch / 1e9 for k, v in by_op.items()},
                       dict(not_counted), missing)


@contextmanager
def dense_mode(model: nn.Module):
    """Run a model as its dense self for a while (ATS off); the last ATS forward's `ats_trace` survives."""
    ats, trace = getattr(model, "ats", None), getattr(model, "ats_trace", None)
    try:
        model.ats = None
        yield model
    finally:
        model.ats = ats
        if trace is not None:  # a dense forward clears it; the last ATS batch's record stays readable
            model.ats_trace = trace


def dense_gflops(model: nn.Module, input_shape: Optional[Sequence[int]] = None, device=None) -> float:
    """Per-view GFLOPs of the dense model by fvcore on a batch of 1 (input (C, T, H, W), or (C, H, W) for
    image models; default: the model's own frames and size). ATS, if on, is switched off for the count."""
    t, h, w = input_thw(model, input_shape)
    shape = (1, 3, t, h, w) if _is_video(model) else (1, 3, h, w)
    param = next(model.parameters())
    x = torch.zeros(shape, device=device or param.device, dtype=param.dtype)
    with dense_mode(model):
        return fvcore_count(model, x).gflops


# ---------------------------------------------------------------------------------------------- analytic


def _is_video(model) -> bool:
    return bool(getattr(model, "is_video", False))


def _spec(model: nn.Module, ats_path: bool) -> CostSpec:
    """The cost terms of the model's family (declared in its family file, next to its blocks), for its ATS
    forward pass (`ats_path`) or its own."""
    family = family_of(model)
    if family is None:
        raise VideoATSError(f"no GFLOPs model for {type(model).__name__}")
    if ats_path and family.ats_flops_spec is not None:
        return family.ats_flops_spec(model)
    return family.flops_spec(model)


def input_thw(model, input_shape: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    """(frames, height, width) of one view, from (C, T, H, W) / (C, H, W) or the model's defaults."""
    video = _is_video(model)
    if input_shape is None:
        if not hasattr(model, "img_size"):  # timm: the size lives with the patch embedding
            h, w = model.patch_embed.img_size
            return 1, int(h), int(w)
        return int(model.num_frames), int(model.img_size), int(model.img_size)
    shape = tuple(int(s) for s in input_shape)
    if video and len(shape) == 4 and shape[0] == 3:
        return shape[1], shape[2], shape[3]
    if not video and len(shape) == 3 and shape[0] == 3:
        return 1, shape[1], shape[2]
    want = "(3, T, H, W)" if video else "(3, H, W)"
    raise VideoATSError(f"input shape {shape} for {type(model).__name__}: give one view as {want}")


def _patch_size(model) -> Tuple[int, int]:
    k = model.patch_embed.proj.kernel_size
    return int(k[0]), int(k[1])


def _count(spec: CostSpec, batch: int, frames: int, locations: int,
           stages: Dict[int, Tuple[Tensor, int, int, Optional[int]]], padded: bool,
           size: Optional[Tuple[int, int]] = None, selection: str = "inverse_transform") -> Tensor:
    """FLOPs per sample (B,), float64, on the device of the stage masks (CPU without stages). stages:
    block -> (mask (B, T, L0) of tokens kept after it, slots per frame after it, locations temporal
    attention runs over after it, patch-token rows per sample token-wise layers computed after it, padding
    included, or None: the present tokens). Blocks without a stage keep what came in. `size`: the input's
    (height, width), which a spec with `at_size` prices its fixed work by. `selection`: what the stage blocks
    do (`ATSConfig.selection`): ATS and `top_k` compute the CLS scoring row and then only the kept queries,
    `random` only the kept queries; EViT and ToMe compute every query (the reduction follows attention), EViT
    the CLS attention row once more, ToMe its matching (|A| x |B| pairs of head-wide keys per frame, where it
    merges)."""
    scored = selection in SCORED
    after = selection in AFTER_ATTENTION
    b, t, l0 = batch, frames, locations
    device = next(iter(stages.values()))[0].device if stages else None
    f64 = dict(dtype=torch.float64, device=device)
    total = torch.full((b,), float(spec.patch * t * l0), **f64)
    keys = None  # keys a query meets: its own frame's tokens (1 + n), or a fixed count (`CostSpec.at_size`)
    if spec.at_size is not None:
        fixed, grid, keys = spec.at_size(*size)
        keys = keys or None  # 0: queries meet their own frame's tokens
        if grid != l0:
            raise VideoATSError(f"the sampled grid has {l0} locations, but a {size[0]}x{size[1]} input gives {grid}: "
                                "give the input's shape")
        total += fixed
    if spec.upsample and l0 != spec.native_patches:
        total += spec.dim * l0
    if spec.family == "joint":  # one sequence of 1 + T L tokens, dense only
        return total + sum(_plain(blk, 1 + t * l0) for blk in spec.blocks) + spec.head_fixed
    if spec.family == "vit":
        return total + sum(_plain(blk, 1 + l0) for blk in spec.blocks) + spec.final_norm * (1 + l0) + spec.head_fixed
    n = torch.full((b, t), float(l0), **f64)  # present tokens per frame
    per_loc = None  # present frames per location; None = every location in every frame
    width = t_width = l0  # slots per frame the grid holds; locations of the grid temporal attention sees
    rows = None  # patch-token rows per sample token-wise layers compute, padding included; None: the present
    for i, blk in enumerate(spec.blocks):
        stage = stages.get(i)
        if stage is None:
            k, width_out, t_width_out, rows_out = n, width, t_width, rows
        else:
            mask, width_out, t_width_out, rows_out = stage
            k = mask.sum(dim=2).to(torch.float64)
        # rows token-wise layers compute per sample: the present tokens, or (padded) what the layout computed
        rows_in = n.sum(dim=1) if rows is None or not padded else rows
        computed = k.sum(dim=1) if rows_out is None or not padded else rows_out
        if spec.family == "divided":  # temporal attention over frames, per location, CLS excluded
            total += blk.t_tok * rows_in  # token-wise: on the slots
            if padded:
                total += blk.t_pair * t_width * t * t
            elif per_loc is None:
                total += blk.t_pair * l0 * t * t
            else:
                total += blk.t_pair * (per_loc ** 2).sum(dim=1)
        # spatial attention within every frame, with a CLS per frame
        queries, q_width = (n, width) if after and stage is not None else (k, width_out)
        total += blk.pre * (t + rows_in) + blk.proj * (t + (rows_in if after and stage is not None else computed))
        if after and stage is not None and selection == "tome":
            merges = k.sum(dim=1) < n.sum(dim=1)  # no merge, no matching
            total += blk.match * merges * ((n // 2) * (n - n // 2)).sum(dim=1)
        if padded:
            total += blk.pair * t * (1 + q_width) * (1 + width if keys is None else keys)
            if stage is not None and scored:
                total += blk.score * t * (1 + width)
        else:
            total += blk.pair * ((1 + queries) * ((1 + n) if keys is None else keys)).sum(dim=1)
            if stage is not None and scored:
                total += blk.score * (1 + n).sum(dim=1)
        # MLP: TimeSformer has one CLS, the per-frame models one per frame
        total += blk.mlp * (computed + (1 if spec.family == "divided" else t))
        if stage is not None:
            per_loc = stage[0].sum(dim=1).to(torch.float64)
        n, width, t_width, rows = k, width_out, t_width_out, rows_out
    total += spec.head_fixed + spec.head_per_frame * t
    if spec.head_block is not None:
        total += _plain(spec.head_block, 1 + t)
    return total


def analytic_gflops(model: nn.Module, input_shape: Optional[Sequence[int]] = None,
                    masks: Optional[Dict[int, Tensor]] = None) -> float:
    """Per-view GFLOPs without tracing, equal to fvcore's on the same shapes.

    Without `masks`: the dense model (ATS off). With `masks` {block: bool (T, L) of tokens kept after that
    ATS block, over the original patch locations}: the ATS forward of one sample keeping exactly those
    tokens, priced on its real tokens (what `sample_gflops` does for a recorded forward pass).
    """
    t, h, w = input_thw(model, input_shape)
    spec = _spec(model, ats_path=bool(masks))
    if spec.at_size is not None:
        l0 = spec.at_size(h, w)[1]
    else:
        ph, pw = _patch_size(model)
        l0 = (h // ph) * (w // pw)
    stages = {}
    for block, m in (masks or {}).items():
        m = torch.as_tensor(m, dtype=torch.bool)
        m = m.reshape(1, *m.shape[-2:]) if m.dim() >= 2 else m.reshape(1, 1, -1)
        if m.shape[1:] != (t, l0):
            raise VideoATSError(f"mask for block {block} has shape {tuple(m.shape[1:])}, expected ({t}, {l0})")
        locations = int(m.any(dim=1).sum())  # aligned: spatial and temporal attention see the same slots
        stages[int(block)] = (m, locations, locations, None)
    if stages and max(stages) >= len(spec.blocks):
        raise VideoATSError(f"mask for block {max(stages)}: the model has blocks 0..{len(spec.blocks) - 1}")
    return float(_count(spec, 1, t, l0, stages, padded=False, size=(h, w))[0]) / 1e9


def _from_trace(model: nn.Module, inputs, padded: bool) -> Tensor:
    trace = list(getattr(model, "ats_trace", []) or []) if getattr(model, "ats", None) is not None else []
    shape = None if inputs is None else tuple(inputs.shape if isinstance(inputs, Tensor) else inputs)
    if not trace:
        if getattr(model, "ats", None) is not None:
            raise VideoATSError("no ATS forward pass recorded yet: run the model on a batch before counting")
        batch = 1 if shape is None else shape[0]
        per_view = analytic_gflops(model, None if shape is None else shape[1:])
        return torch.full((batch,), per_view, dtype=torch.float64)
    b, t, l0 = trace[0].mask.shape
    if shape is not None and shape[0] != b:
        raise VideoATSError(f"the last forward pass had batch {b}, not {shape[0]}")
    stages = {r.block: (r.mask, int(r.padded_slots), int(r.aligned_slots), None if r.rows is None else int(r.rows))
              for r in trace}
    spec = _spec(model, ats_path=True)
    size = input_thw(model, None if shape is None else shape[1:])[1:]
    return _count(spec, b, t, l0, stages, padded, size, model.ats.selection) / 1e9


def sample_gflops(model: nn.Module, inputs: Union[Tensor, Sequence[int], None] = None) -> Tensor:
    """Per-sample GFLOPs (B,) of the last forward pass, from each sample's kept tokens (no tracing).

    For a dense model every sample costs the dense count; pass the batch (or its shape) so the batch
    size and view shape are known.
    """
    return _from_trace(model, inputs, padded=False)


def padded_gflops(model: nn.Module, inputs: Union[Tensor, Sequence[int], None] = None) -> float:
    """GFLOPs per sample the last batch actually computed, padding included (attention on the padded
    rectangle); equals the mean of `sample_gflops` for dense models and at batch 1 with tube ATS."""
    return float(_from_trace(model, inputs, padded=True).mean())
