"""The token reducers ATS is compared with that act after attention: EViT and ToMe, as pure functions on a
token grid (B, T, L) (T frames of L slots, `valid` marking the present tokens; None: all are).

ATS (and the `top_k` and `random` baselines) sample inside attention: the CLS row decides, and only the kept
queries are computed. EViT and ToMe, as their papers define them, let a block's attention run over every token
and then reduce the tokens before the MLP, folding what they drop into what they keep:
- EViT (Liang et al., ICLR 2022): keep the tokens the CLS attends to most (its attention averaged over heads)
  and fuse the others of a frame into one token, their sum weighted by that attention;
- ToMe (Bolya et al., ICLR 2023): split a frame's tokens alternately into sources A and destinations B, match
  each source to its most similar destination (cosine of the keys averaged over heads), merge the r best matched
  sources into their destinations as size-weighted averages, and from then on add log(size) to every
  attention logit (proportional attention).
Both keep the T x L grid: a fused token takes the slot of one token it absorbed, a merged one stays in its
destination's slot, and nothing is merged across frames, so temporal attention and X-ViT's shift stay aligned.
What a row (one budget) covers follows the ATS variants (`core.py`): a frame (`image`, `frame`), the clip's
locations (`tube`: the same locations everywhere) or, for EViT, the clip's tokens (`joint`).

A plan says, for every slot, where its value goes (`dest`, a slot of the same frame) with which weight; `merge`
applies it. The plans are discrete and are made without autograd; `merge` is differentiable in the tokens (and
in EViT's weights, as EViT trains through them).
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .layout import Layout, SlotGather, gather_slots
from .sampler import budget_count
from .stage import select_keep, tube_scores


class MergePlan(NamedTuple):
    """One reducing stage: `keep` (B, T, L) the tokens present after it; every slot's value goes to `dest`
    (B, T, L) with `weight` (B, T, L); with `normalise` a destination's new value is the weighted mean of what
    went to it (ToMe), else the weighted sum (EViT); `sizes` (B, T, L) the tokens' sizes after it (ToMe)."""
    keep: Tensor
    dest: Tensor
    weight: Tensor
    normalise: bool
    sizes: Optional[Tensor] = None


def merge(y: Tensor, plan: MergePlan) -> Tensor:
    """Apply a plan to grid tokens y (B, T, L, D): y'[d] = sum over slots j with dest j = d of w_j y_j (divided
    by the sum of those w_j with `normalise`). A slot that is gone receives nothing: it comes out as zero."""
    w = plan.weight.to(y.dtype)
    dest = plan.dest[..., None].expand_as(y)
    out = torch.zeros_like(y).scatter_add(2, dest, y * w[..., None])
    if plan.normalise:
        total = torch.zeros_like(w).scatter_add(2, plan.dest, w)
        out = out / total.clamp_min(torch.finfo(total.dtype).tiny)[..., None]
    return out


def cls_attention(q_cls: Tensor, k: Tensor, scale: float, key_valid: Optional[Tensor] = None) -> Tensor:
    """EViT's attentiveness: the CLS row of attention (softmax over the present keys, the CLS among them),
    averaged over heads, at the patch keys. q_cls (G, H, 1, d), k (G, H, 1 + L, d), key_valid (G, 1 + L) bool or
    None. Returns (G, L), 0 for absent tokens; it does not sum to 1 (the CLS keeps its share)."""
    logits = (q_cls @ k.transpose(-2, -1)).float().squeeze(-2) * scale  # (G, H, 1 + L)
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[:, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)[:, 1:]


def evit_plan(attn: Tensor, valid: Optional[Tensor], variant: str, budget: float, slots0: int,
              min_tokens: int) -> MergePlan:
    """EViT on a grid: attn (B, T, L) is `cls_attention` per frame (0 where absent; it may carry autograd, which
    the fused token's weights keep). Every row keeps the budget's count of its most attended tokens (`top_k` on
    these scores, the same counting as every selection), and every frame that dropped some fuses them into one
    token, sum_j a_j y_j, in the slot of the one it attended most (`tube`: the dropped location with the largest
    tube score, the same in every frame), which stays present. A frame that dropped nothing fuses nothing."""
    b, t, l = attn.shape
    with torch.no_grad():
        present = torch.ones_like(attn, dtype=torch.bool) if valid is None else valid
        # top-k never keeps a zero score; an attention that underflowed to 0 is still a token to rank (last)
        a = torch.where(present, attn.detach().clamp_min(torch.finfo(attn.dtype).tiny), 0.0)
        kept = select_keep(a, valid, variant, budget, slots0, min_tokens, selection="top_k")
        dropped = present & ~kept
        rank = tube_scores(a)[:, None, :].expand(b, t, l) if variant == "tube" else a
        fused = rank.masked_fill(~dropped, float("-inf")).argmax(dim=2, keepdim=True)  # (B, T, 1)
        fuses = dropped.any(dim=2, keepdim=True)
        slot = torch.arange(l, device=a.device).expand(b, t, l)
        dest = torch.where(dropped, fused.expand(b, t, l), slot)
        keep = kept | (fuses & (slot == fused))
    weight = torch.where(dropped, attn, torch.ones_like(attn))
    return MergePlan(keep, dest, weight, normalise=False)


def tome_merge_count(present: int, budget: float, min_tokens: int) -> int:
    """ToMe's r for a row of `present` patch tokens: the budget's count counts the CLS (a ratio of present + 1,
    or a count, at least `min_tokens`); a budget that binds keeps that count less the CLS (at least 2), and
    ToMe merges at most one token per source (|A| = present // 2)."""
    k = budget_count(budget, present + 1, min_tokens)
    if k >= present + 1:
        return 0
    return max(0, min(present - max(k - 1, 2), present // 2))


def tome_plan(metric: Tensor, valid: Optional[Tensor], sizes: Tensor, variant: str, present: int,
              r: int) -> MergePlan:
    """ToMe's bipartite soft matching on a grid: metric (B, T, L, d) the keys averaged over heads, sizes (B, T, L).
    Every frame holds `present` tokens (ToMe merges the same number in every frame, so the count is the same
    everywhere and known without reading the device); numbered in slot order (which is location order), the even
    ones are destinations B, the odd ones sources A. Each source's best destination has the largest cosine
    similarity (`tube`: mean over frames, rows are locations and every frame merges the same pairs); the r
    sources best matched merge into theirs (ties: lowest number first), as size-weighted means."""
    b, t, l, _ = metric.shape
    device = metric.device
    slot = torch.arange(l, device=device).expand(b, t, l)
    if r <= 0:
        keep = torch.ones(b, t, l, dtype=torch.bool, device=device) if valid is None else valid
        return MergePlan(keep, slot, torch.ones_like(sizes), normalise=True, sizes=sizes)
    n_a = present // 2
    n_b = present - n_a
    with torch.no_grad():
        here = torch.ones(b, t, l, dtype=torch.bool, device=device) if valid is None else valid
        number = here.long().cumsum(dim=2) - 1
        side = torch.where(here, number % 2, 2)  # 0: B, 1: A, 2: absent
        order = torch.sort(side.to(torch.uint8), dim=2, stable=True)[1]  # B's slots, then A's, in slot order
        dst, src = order[..., :n_b], order[..., n_b:present]
        unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        pick = lambda idx: unit.gather(2, idx[..., None].expand(-1, -1, -1, unit.shape[-1]))  # noqa: E731
        sim = pick(src) @ pick(dst).transpose(-1, -2)  # (B, T, |A|, |B|)
        if variant == "tube":
            sim = sim.mean(dim=1, keepdim=True).expand(b, t, n_a, n_b)
        match = sim.argmax(dim=-1, keepdim=True)  # the first of equal maxima
        best = sim.gather(-1, match).squeeze(-1)
        match = match.squeeze(-1)
        chosen = torch.sort(best, dim=-1, descending=True, stable=True)[1][..., :r]  # (B, T, r) into A
        merged = src.gather(2, chosen)
        into = dst.gather(2, match.gather(2, chosen))
        dest = slot.scatter(2, merged, into)
        keep = here.scatter(2, merged, torch.zeros_like(merged, dtype=torch.bool))
        weight = torch.where(here, sizes, torch.ones_like(sizes))
        new_sizes = torch.zeros_like(weight).scatter_add(2, dest, weight) * keep
    return MergePlan(keep, dest, weight, normalise=True, sizes=new_sizes)


class Reduction(NamedTuple):
    """What a block that reduces after attention (EViT, ToMe) does to its tokens once the attention residual is
    added: merge them by the plan, then keep the new grid's slots (`gather` None: the grid stays)."""
    plan: MergePlan
    gather: Optional[SlotGather]

    def grid(self, x: Tensor) -> Tensor:
        """(B, T, L, D) -> (B, T, W, D)."""
        return gather_slots(merge(x, self.plan), self.gather)

    def frame_rows(self, xs: Tensor) -> Tensor:
        """Frame rows with the CLS first, (B*T, 1 + L, D) -> (B*T, 1 + W, D)."""
        b, t, l = self.plan.keep.shape
        patches = self.grid(xs[:, 1:].reshape(b, t, l, xs.shape[-1]))
        return torch.cat([xs[:, :1], patches.reshape(b * t, -1, xs.shape[-1])], dim=1)


def size_biased(layout: Layout, sizes: Tensor, temporal: bool) -> Layout:
    """ToMe's proportional attention: the layout's attention masks become additive biases, log(size) of every
    key (-inf where absent: a gone token has size 0), in frame attention (the CLS has size 1) and in temporal
    attention over a location's frames (`temporal`: TimeSformer's; a location no frame holds attends to all, as
    `temporal_mask` has it)."""
    if layout.valid is not None:
        sizes = sizes * layout.valid
    b, t, w = sizes.shape
    frame = torch.cat([sizes.new_ones(b * t, 1), sizes.reshape(b * t, w)], dim=1).log()[:, None, None, :]
    bias = None
    if temporal:
        aligned = layout.aligned(sizes[..., None])[..., 0].transpose(1, 2).reshape(-1, t)
        bias = torch.where(aligned.any(dim=-1, keepdim=True), aligned.log(), 0.0)[:, None, None, :]
    return replace(layout, frame_mask=frame, temporal_mask=bias)
