"""The numerical heart of ATS: significance scores and inverse transform sampling (and, as the baselines it
is measured against, a fixed-count top-k pick and a uniformly random pick with the same contract).

They work on rows of candidates and know nothing about images, frames or backbones; the
variants in `core.py` decide what a row is (an image, a frame, a clip, or one score per tube).
The arithmetic follows the official ATS code step by step (including its quirks) so that, given the same
attention, the same tokens are kept.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

SOFTMAX_EPS = 1e-6  # the official `softmax_with_policy` smoothing
_TINY = torch.finfo(torch.float32).tiny


def cls_significance(q_cls: Tensor, k: Tensor, v: Tensor, scale: float, key_valid: Optional[Tensor] = None) -> Tensor:
    """Score of every patch token: CLS attention (summed over heads) times the L2 norm of its value.

    q_cls: (G, H, 1, d); k, v: (G, H, 1 + L, d), the CLS first; key_valid: (G, 1 + L) bool or None.
    Only the CLS row of the attention is computed (that is all the sample needs), with the official
    masked softmax: exp(a - max) * mask, then (e + eps/N) / (sum + eps), in fp32. Absent tokens score 0.
    Under autocast the keys and values stay in their half type (no fp32 copy of a whole activation): the
    logits row is cast after the product, the value norm accumulates in fp32. Returns (G, L).
    """
    logits = (q_cls @ k.transpose(-2, -1)).float().squeeze(-2) * scale  # (G, H, N)
    n = logits.shape[-1]
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    present = float(n)
    if key_valid is not None:
        mask = key_valid[:, None, :].float()
        mask[..., 0] = 1.0  # the CLS always attends to itself
        e = e * mask
        # the official smoothing divides by the token count; count present tokens, not padding, so a
        # pruned batch and a masked one score alike (at batch 1 the two counts are the same)
        present = mask.sum(dim=-1, keepdim=True)
    attn = (e + SOFTMAX_EPS / present) / (e.sum(dim=-1, keepdim=True) + SOFTMAX_EPS)
    v_norm = torch.linalg.vector_norm(v, dim=(1, 3), dtype=torch.float32)  # over heads and channels
    score = attn.sum(dim=1) * v_norm
    if key_valid is not None:
        score = score * key_valid.float()
    return score[:, 1:]


def num_samples(tokens: float, present: Tensor, reference: int, min_tokens: int = 8) -> Tensor:
    """How many ys each row's inverse transform draws, for a budget that counts the CLS token.

    present: (R,) tokens present in each row, CLS included. Official rules: a budget above the present
    count is the present count, a budget <= 1 is a ratio of it, never fewer than `min_tokens`. When the
    budget does not bind, the official code draws `reference - 1` ys (the token count at the first ATS
    stage); when it binds, we draw budget - 1. Counting present tokens per row (not the padded length)
    makes a sample's result independent of the batch it is in, and masked mode equal to pruned mode.
    """
    n = present.to(torch.float64)
    # min(budget, n), a budget <= 1 read as a ratio of n (n >= 1: it counts the CLS)
    k = n * float(tokens) if tokens <= 1 else n.clamp(max=float(tokens))
    k = k.clamp(min=float(min_tokens)).round()
    draws = torch.where(k >= n, float(reference - 1), k - 1)
    return draws.clamp(min=2).long()


def budget_count(tokens: float, present: int, min_tokens: int) -> int:
    """The budget's token count (CLS included) for a row of `present` tokens: `num_samples`' k for one row in
    plain Python (float64 and half-to-even rounding, as torch's)."""
    present = int(present)  # a traced shape (torch.jit.trace, fvcore) arrives as a tensor
    k = present * float(tokens) if tokens <= 1 else min(float(present), float(tokens))
    return round(max(k, float(min_tokens)))


def host_draws(tokens: float, present: int, reference: int, min_tokens: int = 8) -> int:
    """`num_samples` for one present count known on the host (no tensor, no device read)."""
    k = budget_count(tokens, present, min_tokens)
    return max(reference - 1 if k >= present else k - 1, 2)


def never_binds(tokens: float, reference: int) -> bool:
    """True when a budget never cuts a row of at most `reference` tokens: every row then draws
    `reference - 1` ys, a count the host knows without reading the device."""
    return tokens >= 1 if tokens <= 1 else tokens >= reference


def max_kept(tokens: float, slots: int, min_tokens: int = 8) -> int:
    """The most candidates a row of `slots` candidates can keep under the budget, whatever its scores and
    whichever of them are present: the width of a stage in the static layout. Kept <= present and
    kept <= draws; both grow with the present count, so the bound is taken with every candidate present."""
    k = budget_count(tokens, slots + 1, min_tokens)  # the CLS counts
    return slots if k >= slots + 1 else min(slots, max(k - 1, 2))


def _linspace_rows(counts: Tensor, width: int) -> Tensor:
    """(R, width) float32: row r holds linspace(0, 1, counts[r]) (then zeros), for every row at once, with the
    formula of torch's scalar linspace kernel (from the start up to half way, from the end after). torch's
    vectorised CPU kernel can differ from it in the last bit (tested), which is why one shared count still
    goes through torch.linspace itself, as the official code does."""
    i = torch.arange(width, device=counts.device, dtype=torch.float32)[None]
    last = (counts - 1).to(torch.float32)[:, None]
    step = 1.0 / last
    lin = torch.where(i < (counts // 2)[:, None], step * i, 1.0 - step * (last - i))
    return lin.masked_fill_(i >= counts[:, None], 0.0)


def _targets(ys_start: Tensor, n_samples, width: int) -> Tuple[Tensor, Optional[Tensor]]:
    """Each row's evenly spaced targets from its ys_start to 1, in the official arithmetic:
    ys = start + (lin * (c - 1) - start * i) / (c - 1) for c draws. `n_samples` is an int (every row draws
    as many: torch.linspace itself, as the official code) or an (R,) tensor (rows are padded to `width`,
    second output False there). No device read, no loop over counts, nothing cached between calls.
    Compiled code takes the per-row formula for a shared count too: a compiler fixes torch.linspace's count,
    which would compile the graph again for every stage and every batch's width."""
    if isinstance(n_samples, int):
        count = n_samples
        steps = torch.arange(0, count, device=ys_start.device, dtype=torch.float32)[None]
        if torch.compiler.is_compiling():
            lin = _linspace_rows(torch.full((1,), count, device=ys_start.device), count)
        else:
            lin = torch.linspace(0, 1.0, count, device=ys_start.device)[None]
        return ys_start + (lin * (count - 1) - ys_start * steps) / (count - 1), None
    counts = n_samples[:, None]
    steps = torch.arange(0, width, device=ys_start.device, dtype=torch.float32)[None]
    last = (counts - 1).to(torch.float32)
    ys = ys_start + (_linspace_rows(n_samples, width) * last - ys_start * steps) / last
    return ys, steps < counts


def inverse_transform_sample(scores: Tensor, n_samples, present: Optional[Tensor] = None,
                             width: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Pick tokens whose score-CDF is nearest to evenly spaced targets; duplicates collapse.

    scores: (R, M), non-negative; a zero score is never picked. n_samples: targets per row (an int or
    (R,) tensor). Returns `index` (R, W) into the M candidates, in ascending score order, and `keep`
    (R, W) bool (False where a duplicate collapsed), W = min(width, M). The kept count per row
    is what makes ATS adaptive. `width` bounds the draws of every row (default: max n_samples, which
    reads the device once when n_samples is a tensor; callers that know a bound pass it, so the sample
    never waits for the device). `present` (R, M) marks real candidates: absent ones (padding, tokens
    dropped earlier) are left out as if the row were shorter, which is what the official code computes on
    a pruned sample of its own; so a sample's choice does not depend on its padding.
    """
    r, m = scores.shape
    s = scores.float()
    if present is not None:
        s = s * present
    s = s / s.sum(dim=1, keepdim=True).clamp_min(_TINY)
    sorted_s, order = torch.sort(s, dim=1)
    cdf = torch.cumsum(sorted_s, dim=1)  # non-decreasing: its min is the first value, its max the last
    if present is None:
        lo = cdf[:, :1]
    else:  # the CDF starts at the first present candidate (absent ones sort first, with score 0)
        first = (m - present.sum(dim=1, keepdim=True)).clamp(max=m - 1)
        lo = cdf.gather(1, first)
    ncdf = ((cdf - lo) / (cdf[:, -1:] - lo).clamp_min(_TINY)).clamp_min(0.0)

    # targets from the smallest non-zero CDF value up to 1, in the official arithmetic
    ys_start = (ncdf + (ncdf == 0).float() * 1e8).min(dim=1, keepdim=True)[0]
    if isinstance(n_samples, Tensor):
        n_samples = n_samples.to(s.device).expand(r)
        width = int(n_samples.max()) if width is None else int(width)
    else:
        n_samples = width = int(n_samples)
    ys, drawn = _targets(ys_start, n_samples, width)

    # nearest CDF value per target (first index on ties, as argmin): the CDF is sorted, so look at the
    # neighbours of each target's insertion point, then step back to the start of a plateau
    right = torch.searchsorted(ncdf, ys, side="left").clamp_(max=m - 1)
    left = (right - 1).clamp_(min=0)
    nearer_left = (ys - ncdf.gather(1, left)).abs_() <= (ys - ncdf.gather(1, right)).abs_()
    pick = torch.searchsorted(ncdf, ncdf.gather(1, torch.where(nearer_left, left, right)), side="left")
    if drawn is not None:
        pick = pick.masked_fill_(~drawn, m)  # padding targets act as duplicates

    # de-duplicate: a pick equal to its successor becomes the dummy M (the last one is compared with 1);
    # the targets increase, so the picks already come sorted, as the official code sorts them
    successor = torch.cat([pick[:, 1:], pick.new_ones(r, 1)], dim=1)
    pick = torch.sort(pick.masked_fill_(successor == pick, m), dim=1)[0][:, : min(ys.shape[1], m)]
    keep = pick != m
    index = order.gather(1, pick.clamp(max=m - 1))
    return index, keep


def top_k_sample(scores: Tensor, n_samples, present: Optional[Tensor] = None,
                 width: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """`inverse_transform_sample`'s contract with a fixed count (`selection="top_k"`): the `n_samples`
    highest-scoring present candidates of every row (zero scores never), however the scores are spread. The
    baseline that shows what ATS's adaptive count buys: the same scores, the same budget, no adaptivity."""
    r, m = scores.shape
    s = scores.float()
    if present is not None:
        s = s * present
    counts = n_samples.to(s.device).expand(r) if isinstance(n_samples, Tensor) else \
        torch.full((r,), int(n_samples), device=s.device)
    w = min(m, int(counts.max()) if width is None else int(width))
    top, index = torch.sort(s, dim=1, descending=True, stable=True)
    keep = (torch.arange(w, device=s.device)[None] < counts[:, None]) & (top[:, :w] > 0)
    return index[:, :w], keep


_MASK32 = 0xFFFFFFFF
_INDEX_BITS = 24  # a key's low bits: the token's index in the clip's grid (at most 16.7 M tokens)


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding values below 2^32;
    every product stays below 2^59, so nothing overflows."""
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def random_keys(seed: int, block: int, location: Tensor, slots0: int, frames_share: bool = False) -> Tensor:
    """`selection="random"`'s sort keys: int64 (B, T, L) for a grid whose slots hold the original locations
    `location` (of `slots0` per frame): the 32-bit hash of (seed, block, sample, frame, location) above the
    token's index in the clip's grid (frame x slots0 + location, so no two candidates of a row tie). A key
    belongs to the token, not to its slot: the same tokens are drawn whatever the layout (masked or pruned,
    any padding), on every device, with no generator state in the forward pass. `frames_share`: one key per
    location, the same in every frame (a tube's). The sample index makes samples of a batch draw
    independently."""
    b, t, _ = location.shape
    device = location.device
    sample = torch.arange(b, device=device).view(b, 1, 1)
    frame = torch.zeros(1, t, 1, dtype=torch.long, device=device) if frames_share else \
        torch.arange(t, device=device).view(1, t, 1)
    h = _mix32(torch.full((1, 1, 1), (seed & _MASK32) ^ (block * 0x9E3779B1 & _MASK32), dtype=torch.long,
                          device=device))
    h = _mix32(h ^ sample)
    h = _mix32(h ^ frame)
    h = _mix32(h ^ location)
    return (h << _INDEX_BITS) | (frame * slots0 + location)


def random_sample(keys: Tensor, n_samples, present: Optional[Tensor] = None,
                  width: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """`inverse_transform_sample`'s contract for `selection="random"`: the `n_samples` present candidates of
    every row with the largest `random_keys` (int64, unique within a row), a uniformly random subset of the
    budget's size; absent candidates never."""
    r, m = keys.shape
    if present is not None:
        keys = keys.masked_fill(~present.bool(), -1)
    counts = n_samples.to(keys.device).expand(r) if isinstance(n_samples, Tensor) else \
        torch.full((r,), int(n_samples), device=keys.device)
    w = min(m, int(counts.max()) if width is None else int(width))
    top, index = torch.sort(keys, dim=1, descending=True)
    keep = (torch.arange(w, device=keys.device)[None] < counts[:, None]) & (top[:, :w] >= 0)
    return index[:, :w], keep
