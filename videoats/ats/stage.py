"""The tensor work of one ATS stage, as pure functions of tensors and plain values: scoring and sampling
(`score_and_select`), the layout's work before the host knows the new widths (`plan_layout`), and after
(`arrange`).

`SamplingRun` (core.py) keeps the state between stages and calls these, either as they are or, with
`sampler="compiled"`, each compiled into one graph (`maybe_compiled`): about a hundred small ops per stage
become a few fused kernels, which is what a GPU needs when launches, not FLOPs, decide the time.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .sampler import (cls_significance, host_draws, inverse_transform_sample, never_binds, num_samples, random_sample,
                      top_k_sample)


def tube_scores(scores: Tensor) -> Tensor:
    """The `tube` rule: per-frame scores (B, T, L) (0 for absent tokens), each frame's normalised to sum 1 so that
    every frame has the same say, summed over frames -> (B, L), one score per location."""
    per_frame = scores / scores.sum(dim=2, keepdim=True).clamp_min(1e-12)
    return per_frame.sum(dim=1)


def select_keep(scores: Tensor, valid: Optional[Tensor], variant: str, budget: float, slots0: int,
                min_tokens: int, selection: str = "inverse_transform") -> Tensor:
    """Sample one stage: significance scores (B, T, L) (0 for absent tokens), or with `selection="random"`
    the tokens' `random_keys`, -> keep (B, T, L) bool. One inverse transform sample per row (or one of the
    baselines: `top_k`, a fixed count of the highest scores; `random`, a uniformly random subset of that
    count), where the variant decides what a row is (module docstring of core.py)."""
    b, t, l = scores.shape
    present = valid  # None: every token of the grid is there
    by_keys = selection == "random"  # `scores` are the tokens' random keys
    if valid is not None:
        scores = scores.masked_fill(~valid, -1) if by_keys else scores * valid
    if variant == "tube":
        if by_keys:  # a location's key is the same in every frame where it is present (absent: -1)
            rows, ref = scores.amax(dim=1), slots0 + 1
        else:
            rows, ref = tube_scores(scores), slots0 + 1
        present = None if valid is None else valid.any(dim=1)
    elif variant == "joint":
        rows, ref = scores.reshape(b, t * l), t * slots0 + 1
        present = None if valid is None else valid.reshape(b, t * l)
    else:  # image, frame
        rows, ref = scores.reshape(b * t, l), slots0 + 1
        present = None if valid is None else valid.reshape(b * t, l)
    # the draw count is known on the host when every row has it: all candidates present, or a budget
    # that never binds; otherwise it is a per-row tensor, bounded by the reference grid
    if present is None:
        n = host_draws(budget, rows.shape[1] + 1, ref, min_tokens)
    elif never_binds(budget, ref):
        n = ref - 1
    else:
        n = num_samples(budget, present.sum(dim=1) + 1, ref, min_tokens)
    sample = {"top_k": top_k_sample, "random": random_sample}.get(selection, inverse_transform_sample)
    index, keep = sample(rows, n, present, width=max(ref - 1, 2))
    # collapsed duplicates point at a real token: add, never overwrite, so they cannot unset it
    chosen = torch.zeros(rows.shape, dtype=torch.int32, device=rows.device)
    chosen = chosen.scatter_add_(1, index, keep.int()) > 0
    if variant == "tube":
        chosen = chosen[:, None, :].expand(b, t, l)
    keep_grid = chosen.reshape(b, t, l)
    if valid is not None:
        keep_grid = keep_grid & valid
    return keep_grid


def score_and_select(q_cls: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor], valid: Optional[Tensor],
                     grid: Tuple[int, int, int], scale: float, variant: str, budget: float, slots0: int,
                     min_tokens: int, selection: str = "inverse_transform", keys: Optional[Tensor] = None
                     ) -> Tensor:
    """Score and sample one stage: `SamplingRun.sample` as a pure function. With `keys` (the random
    baseline's `random_keys`) nothing is scored."""
    if keys is not None:
        return select_keep(keys, valid, variant, budget, slots0, min_tokens, selection)
    scores = cls_significance(q_cls, k, v, scale, key_valid).reshape(grid)
    return select_keep(scores, valid, variant, budget, slots0, min_tokens, selection)


def held_order(held: Tensor) -> Tensor:
    """Indices of the held positions along the last dim, in their order, then the others (a stable sort of
    the dropped flags); its first `width` (at least the largest held count) are the slots to keep."""
    return torch.sort((~held).to(torch.uint8), dim=-1, stable=True)[1]


def plan_layout(keep: Tensor, location: Tensor, slots0: int, prune: bool, ragged: bool, trim: bool):
    """The tensor work of `SamplingRun.layout` before the host knows the new widths, as a pure function: the mask
    over the original locations (all the masked layout needs); pruned, also the held-first order of the
    slots (per frame when ragged, per sample when aligned) and of the locations (ragged), and in trim the
    values the host reads (largest and smallest held count, tokens kept, largest location union), stacked
    for one read."""
    b, t, _ = keep.shape
    mask = torch.zeros(b, t, slots0, dtype=torch.bool, device=keep.device).scatter_(2, location, keep)
    if not prune:
        return mask, None, None, None
    held = keep if ragged else keep.any(dim=1)  # per frame (ragged) or per sample (aligned)
    union = mask.any(dim=1) if ragged else None
    reads = None
    if trim:
        counts = held.sum(dim=-1)
        reads = torch.stack([counts.max(), counts.min(), mask.sum()] + ([union.sum(dim=-1).max()] if ragged
                                                                        else []))
    return mask, held_order(held), None if union is None else held_order(union), reads


def key_masks(valid: Tensor) -> Tuple[Tensor, Tensor]:
    """A layout's present tokens (B, T, W) -> frame attention's present keys, each frame's CLS first
    (B*T, 1 + W), and the same as `scaled_dot_product_attention`'s mask (B*T, 1, 1, 1 + W): made once per
    layout, not in every block. A frame always has its CLS, so no row of the mask is empty."""
    b, t, w = valid.shape
    keys = torch.cat([valid.new_ones(b * t, 1), valid.reshape(b * t, w)], dim=1)
    return keys, keys[:, None, None, :]


class Rows(NamedTuple):
    """The rows of a flattened grid token-wise layers compute (`present_rows`): `read` gathers them, `write`
    puts the results back; with `scratch`, `write` counts from a scratch row 0 put before the grid's rows,
    where padding entries go."""
    read: Tensor
    write: Tensor
    scratch: bool


def present_rows(mask: Tensor, count: Optional[int] = None, bounded: bool = False) -> Rows:
    """The present rows of `mask`, made once per layout, not in every layer. With their `count` known on the
    host they are found without reading the device (`nonzero_static`); with a bound on it instead (`bounded`,
    the static layout) the indices are padded to the bound: padding reads row 0 and writes to the scratch row.
    Without a count (the masked layout of training), `nonzero` reads it from the device. The padding value is
    `nonzero_static`'s default (-1), not one past the grid: a compiled graph would fix the grid's size."""
    flat = mask.reshape(-1)
    if count is None:
        found = flat.nonzero().squeeze(1)
        return Rows(found, found, False)
    found = torch.nonzero_static(flat, size=count).squeeze(1)
    if not bounded:  # an exact count: no padding
        return Rows(found, found, False)
    return Rows(found.clamp(min=0), found + 1, True)


class Arranged(NamedTuple):
    """A pruned grid after a stage, as `arrange` makes it (W slots per frame, U aligned columns)."""
    index: Tensor  # the slots kept: (B, W) the same in every frame (aligned), (B, T, W) per frame (ragged)
    keep: Tensor  # (B, T, W): which of them hold a kept token
    location: Tensor  # (B, T, W): the original location of every slot
    slots: Tensor  # (B, T, W, 1): `index` per frame, the view a grid's gather takes (`SlotGather`)
    rows: Tensor  # (B*T, 1 + W, 1): the same over a frame's rows, its CLS row first
    column: Optional[Tensor]  # ragged, T > 1, (B, T, W, 1): each slot's aligned column, U for a padding slot
    source: Optional[Tensor]  # `column` clamped to U - 1: where `Layout.unaligned` reads a slot from
    aligned_valid: Optional[Tensor]  # (B, T, U): what is present in each aligned column
    frame_keys: Optional[Tensor]  # `key_masks` of `keep`, when some slot is absent
    frame_mask: Optional[Tensor]
    temporal_mask: Optional[Tensor]  # `temporal_mask` of the aligned grid, when some token there is absent
    token_rows: Optional[Rows]  # `present_rows` of `keep`, when token-wise layers gather (divided blocks)
    key_rows: Optional[Rows]  # of `frame_keys` (a CLS row per frame more)


def temporal_mask(present: Tensor) -> Tensor:
    """(B, T, U) present tokens of a location-aligned grid -> the mask (B*U, 1, 1, T) of attention over each
    location's frames (TimeSformer's temporal attention), made once per layout, not in every block. A
    location no frame holds (static padding) attends to every frame; its output is never used."""
    rows = present.transpose(1, 2).reshape(-1, present.shape[1])
    return (rows | ~rows.any(dim=-1, keepdim=True))[:, None, None, :]


def arrange(keep: Tensor, location: Tensor, mask: Tensor, order: Tensor, aligned_order: Optional[Tensor],
            width: int, aligned: int, ragged: bool, masked: bool, present: Optional[int] = None,
            bounded: bool = False, divided: bool = False) -> Arranged:
    """The layout's tensor work once the host knows the new widths, as a pure function: the slots to keep
    (the first `width` of the held-first `order`), the next keep mask and location map, the index views of
    the blocks' gathers, given `aligned_order` (ragged, T > 1) the location-aligned view over the `aligned`
    locations some frame kept, the attention masks where some token is absent (`masked`: of the slots;
    a ragged video's aligned grid has absent tokens even when every slot holds one), and given `present`
    (the tokens kept, or with `bounded` a bound on them) the rows token-wise layers gather. The temporal mask
    and the token rows without the CLS are made for `divided` (TimeSformer's) blocks only."""
    b, t, _ = keep.shape
    index = order[..., :width]
    per_frame = index if ragged else index[:, None, :].expand(b, t, width)
    keep = keep.gather(2, per_frame)
    location = location.gather(2, per_frame)
    rows = torch.cat([per_frame.new_zeros(b * t, 1), per_frame.reshape(b * t, width) + 1], dim=1)
    column = source = aligned_valid = None
    if aligned_order is not None:
        locations = aligned_order[:, :aligned]  # column -> location, (B, U)
        column_of = torch.full((b, mask.shape[2]), aligned, dtype=torch.long, device=mask.device)
        column_of.scatter_(1, locations, torch.arange(aligned, device=mask.device).expand(b, aligned))
        column = column_of.gather(1, location.flatten(1)).reshape(b, t, width, 1).masked_fill(~keep[..., None],
                                                                                            aligned)
        source = column.clamp(max=aligned - 1)
        aligned_valid = mask.gather(2, locations[:, None, :].expand(b, t, aligned))
    keys, key_mask = key_masks(keep) if masked else (None, None)
    temporal = None
    if divided and t > 1 and (aligned_valid is not None or masked):
        temporal = temporal_mask(keep if aligned_valid is None else aligned_valid)
    token_rows = key_rows = None
    if masked and present is not None:
        token_rows = present_rows(keep, present, bounded) if divided else None
        key_rows = present_rows(keys, present + b * t, bounded)
    return Arranged(index, keep, location, per_frame[..., None], rows[..., None], column, source, aligned_valid,
                    keys, key_mask, temporal, token_rows, key_rows)


# what `sampler="compiled"` compiles with; the tests swap in dynamo's "eager" backend (the same graph capture,
# no code generation) to check every variant quickly, and check inductor itself on one
COMPILE_BACKEND = "inductor"


def maybe_compiled(fn, sampler: str, float_args: bool = False):
    """`fn` itself, or with `sampler="compiled"` `fn` compiled: once per process, with dynamic shapes (one
    graph for every batch, width and stage; the budget and the variant specialise it, so a model has a
    handful), as one graph. On CUDA inductor writes it as a few Triton kernels; on the CPU as C++ loops.
    The eager `fn` is the reference (tests check the two keep the same tokens), and runs wherever a
    compiled function cannot: inside a model being compiled whole (dynamo inlines it), under a
    TorchScript trace (fvcore) or a Python dispatch mode (op counters). `float_args`: `fn` takes floats that
    are constants of a model (a budget, a scale), compiled into the graph."""
    if sampler != "compiled" or torch.compiler.is_compiling() or torch.jit.is_tracing() \
            or _get_current_dispatch_mode() is not None:
        return fn
    return _compiled(fn, COMPILE_BACKEND, float_args)


# graphs a compiled stage function may keep: one per budget, variant and layout flags a process meets, so more
# than dynamo's default of 8 when every block has its own budget
RECOMPILE_LIMIT = 64


@lru_cache(maxsize=None)
def _compiled(fn, backend: str, float_args: bool):
    """`fn` compiled once per process. Dynamo's recompile limit is global: it is raised to `RECOMPILE_LIMIT`
    once, here (never lowered), rather than patched around every call, which costs host time (about 50 us
    a call on a CPU, more than some stages' eager ops)."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    # inductor checks every fallback op's output size and alignment at run time: host time (measured on a CPU:
    # half of a compiled sampling call) for graphs the tests check against their eager reference
    options = None if backend != "inductor" else {
        name: False for name in ("size_asserts", "alignment_asserts", "scalar_asserts")
        if hasattr(torch._inductor.config, name)}  # the names this torch knows
    compiled = torch.compile(fn, dynamic=True, fullgraph=True, backend=backend, options=options)
    if not float_args:
        return compiled

    def call(*args):
        # the floats (budget, attention scale) are constants of a model: specialised, they are part of the
        # graph; left dynamic, dynamo turns each into a tensor input at every call (three ops each)
        with config.patch(specialize_float=True):
            return compiled(*args)
    return call
