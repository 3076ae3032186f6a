"""The numerical heart of ATS: significance scores and inverse transform sampling.

Both functions work on rows of candidates and know nothing about images, frames or backbones; the
variants in `core.py` decide what a row is (an image, a frame, a clip, or one score per tube).
The arithmetic follows the official ATS code step by step (including its quirks) so that, given the same
attention, the same tokens are kept.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

SOFTMAX_EPS = 1e-6  # the official `softmax_with_policy` smoothing


def cls_significance(q_cls: Tensor, k: Tensor, v: Tensor, scale: float, key_valid: Optional[Tensor] = None) -> Tensor:
    """Score of every patch token: CLS attention (summed over heads) times the L2 norm of its value.

    q_cls: (G, H, 1, d); k, v: (G, H, 1 + L, d), the CLS first; key_valid: (G, 1 + L) bool or None.
    Only the CLS row of the attention is computed (that is all the sample needs), with the official
    masked softmax: exp(a - max) * mask, then (e + eps/N) / (sum + eps), in fp32. Absent tokens score 0.
    Returns (G, L).
    """
    logits = (q_cls.float() @ k.float().transpose(-2, -1)).squeeze(-2) * scale  # (G, H, N)
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
    g, h, _, d = v.shape
    v_norm = torch.linalg.norm(v.float().transpose(1, 2).reshape(g, n, h * d), ord=2, dim=-1)
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
    k = torch.full_like(n, float(tokens))
    k = torch.minimum(k, n)
    k = torch.where(k <= 1.0, k * n, k)
    k = torch.clamp(k, min=float(min_tokens))
    k = torch.round(k)
    draws = torch.where(k >= n, torch.full_like(n, float(reference - 1)), k - 1)
    return draws.clamp(min=2).long()


def _targets(ys_start: Tensor, n_samples: Tensor) -> Tuple[Tensor, Tensor]:
    """Each row's evenly spaced targets from its ys_start to 1, in the official arithmetic; rows with
    fewer draws than the widest are padded (second output False there)."""
    width = int(n_samples.max())
    ys = torch.zeros(len(n_samples), width, device=ys_start.device)
    for count in n_samples.unique().tolist():  # one linspace per distinct count (a handful)
        rows = n_samples == count
        lin = torch.linspace(0, 1.0, count, device=ys_start.device).unsqueeze(0)
        steps = torch.arange(0, count, device=ys_start.device, dtype=torch.float32).unsqueeze(0)
        start = ys_start[rows]
        ys[rows, :count] = start + ((lin * (count - 1)) - start * steps) / (count - 1)
    drawn = torch.arange(width, device=ys.device)[None, :] < n_samples[:, None]
    return ys, drawn


def inverse_transform_sample(scores: Tensor, n_samples, present: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Pick tokens whose score-CDF is nearest to evenly spaced targets; duplicates collapse.

    scores: (R, M), non-negative; a zero score is never picked. n_samples: targets per row (an int or
    (R,) tensor). Returns `index` (R, W) into the M candidates, in ascending score order, and `keep`
    (R, W) bool (False where a duplicate collapsed), W = min(max n_samples, M). The kept count per row
    is what makes ATS adaptive. `present` (R, M) marks real candidates: absent ones (padding, tokens
    dropped earlier) are left out as if the row were shorter, which is what the official code computes on
    a pruned sample of its own; so a sample's choice does not depend on its padding.
    """
    r, m = scores.shape
    s = scores.float()
    if present is not None:
        s = s * present
    s = s / s.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    sorted_s, order = torch.sort(s, dim=1)
    cdf = torch.cumsum(sorted_s, dim=1)
    if present is None:
        lo = cdf.min(dim=1, keepdim=True)[0]
    else:  # the CDF starts at the first present candidate (absent ones sort first, with score 0)
        first = (m - present.sum(dim=1, keepdim=True)).clamp(max=m - 1)
        lo = cdf.gather(1, first)
    hi = cdf.max(dim=1, keepdim=True)[0]
    ncdf = ((cdf - lo) / ((hi - lo) / 1.0).clamp_min(torch.finfo(torch.float32).tiny)).clamp_min(0.0)

    # targets from the smallest non-zero CDF value up to 1, in the official arithmetic
    ys_start = (ncdf + (ncdf == 0).float() * 1e8).min(dim=1, keepdim=True)[0]
    n_samples = torch.as_tensor(n_samples, device=s.device).expand(r).long()
    ys, drawn = _targets(ys_start, n_samples)

    # nearest CDF value per target (first index on ties, as argmin): the CDF is sorted, so look at the
    # neighbours of each target's insertion point, then step back to the start of a plateau
    right = torch.searchsorted(ncdf, ys, side="left").clamp(max=m - 1)
    left = (right - 1).clamp(min=0)
    d_left = (ys - ncdf.gather(1, left)).abs()
    d_right = (ys - ncdf.gather(1, right)).abs()
    pick = torch.where(d_left <= d_right, left, right)
    pick = torch.searchsorted(ncdf, ncdf.gather(1, pick), side="left")
    pick = torch.where(drawn, pick, torch.full_like(pick, m))  # padding targets act as duplicates

    # de-duplicate: a pick equal to its successor becomes the dummy M (the last one is compared with 1)
    pick = torch.sort(pick, dim=1)[0]
    successor = torch.cat([pick[:, 1:], torch.ones_like(pick[:, :1])], dim=1)
    pick = torch.where(successor == pick, torch.full_like(pick, m), pick)
    pick = torch.sort(pick, dim=1)[0][:, : min(ys.shape[1], m)]
    keep = pick != m
    index = order.gather(1, pick.clamp(max=m - 1))
    return index, keep
