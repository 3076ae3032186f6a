"""Pieces shared by every backbone: attention over a token grid with absent tokens, ATS attention, and
token-wise layers that only touch present tokens (so pruned tokens cost nothing).

Attention modules follow timm's layout (`qkv`, `proj`) so timm and original checkpoints map onto them.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

from ..ats.core import SamplingRun
from ..ats.layout import Layout
from ..ats.stage import Rows


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = split_heads(self.qkv(x), self.num_heads)
        return self.proj(attend(q, k, v))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def split_heads(qkv: Tensor, num_heads: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(G, N, 3*D) -> three (G, H, N, d); the qkv layout is [q heads | k heads | v heads]."""
    g, n, three_d = qkv.shape
    qkv = qkv.reshape(g, n, 3, num_heads, three_d // (3 * num_heads)).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Fused attention; `mask` (G, 1, 1, N) bool, False for absent keys (`Layout.frame_mask`,
    `Layout.temporal_mask`), or a float bias added to the logits (ToMe's log-sizes, -inf for absent keys).
    Returns (G, Nq, H*d)."""
    if mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    g, h, n, d = out.shape
    return out.transpose(1, 2).reshape(g, n, h * d)


def tokenwise(fn: Callable[[Tensor], Tensor], x: Tensor, rows: Optional[Rows]) -> Tensor:
    """Apply a per-token function to the rows `rows` names (`Layout.token_rows` or `key_rows`; None: every
    row); the others come back as zeros (needed: an absent key's value row still meets a zero weight).
    Zeroing the whole output first costs one memory pass, less than the ops that would find and fill the
    absent rows."""
    if rows is None:
        return fn(x)
    y = fn(x.reshape(-1, x.shape[-1]).index_select(0, rows.read))
    n = x.numel() // x.shape[-1]
    out = y.new_zeros(n + rows.scratch, y.shape[-1]).index_copy_(0, rows.write, y)
    return (out[1:] if rows.scratch else out).reshape(*x.shape[:-1], y.shape[-1])


def with_cls(cls: Tensor, x: Tensor) -> Tensor:
    """Prepend a per-frame CLS: cls (B, T or 1, D), x (B, T, L, D) -> (B*T, 1 + L, D)."""
    b, t, l, d = x.shape
    return torch.cat([cls.expand(b, t, d).reshape(b * t, 1, d), x.reshape(b * t, l, d)], dim=1)


def frame_attention(
    attn: nn.Module,
    norm: nn.Module,
    xs: Tensor,
    grid: Tuple[int, int, int],
    layout: Layout,
    run: Optional[SamplingRun] = None,
    block: int = -1,
    kv_hook: Optional[Callable[[Tensor, Tensor, Layout], Tuple[Tensor, Tensor]]] = None,
):
    """Attention within each frame of a grid, with a CLS per frame, optionally sampling tokens (ATS).

    xs: tokens (B*T, 1 + L, D) before `norm` (normalised and projected in one pass over the present ones);
    `kv_hook` may rewrite keys/values (X-ViT's frame shift).
    Without a run, returns (out (B*T, 1 + L, D), None, layout, None). With one, the CLS row decides the sample
    first, then only the kept queries are computed: returns (out for CLS + the new slots, the stage's
    `SlotGather` (None when the grid stays), new layout, None). With a run whose selection reduces after
    attention (EViT, ToMe), every query is computed: returns (out (B*T, 1 + L, D), None, new layout, the
    `Reduction` the block applies once the attention residual is added).
    """
    b, t, _ = grid
    qkv = tokenwise(lambda z: attn.qkv(norm(z)), xs, layout.key_rows)
    q, k, v = split_heads(qkv, attn.num_heads)
    if kv_hook is not None:
        k, v = kv_hook(k, v, layout)
    gather, mask = None, layout.frame_mask  # keys are the slots before this block's sample
    if run is not None and run.after_attention:
        out = tokenwise(attn.proj, attend(q, k, v, mask), layout.key_rows)
        reduction, layout = run.reduce(block, q[:, :, :1], k, attn.scale, layout)
        return out, None, layout, reduction
    if run is not None:
        keep = run.sample(block, q[:, :, :1], k, v, attn.scale, layout.frame_keys, layout.valid)
        gather, layout = run.layout(block, keep)
        if gather is not None:
            q = gather.frame_rows(q)
    out = attend(q, k, v, mask)
    out = tokenwise(attn.proj, out, layout.key_rows)
    return out, gather, layout, None


def drop_path(x: Tensor, p: float, training: bool, batch: int) -> Tensor:
    """Stochastic depth with one draw per sample; x's first dim is the batch, or batch x frames."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(batch).bernoulli_(1.0 - p) / (1.0 - p)
    return x * keep.repeat_interleave(x.shape[0] // batch).reshape(-1, *([1] * (x.dim() - 1)))


class PlainBlock(nn.Module):
    """A pre-norm ViT block (timm's attribute names, so timm blocks run through the same code)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 eps: float = 1e-6, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_prob = drop_path

    def forward(self, x: Tensor) -> Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_prob, self.training, x.shape[0])
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_prob, self.training, x.shape[0])


def call_block(fn: Callable, *args, checkpointing: bool = False):
    """Run a block, recomputing its activations in backward when `checkpointing` (saves memory on the
    large models; the ATS records are keyed by block, so a recomputation just rewrites them)."""
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _branch(block: nn.Module, name: str) -> Callable[[Tensor], Tensor]:
    scale = getattr(block, name, None)
    return scale if scale is not None else (lambda t: t)


def grid_block(block: nn.Module, cls: Tensor, x: Tensor, layout: Layout,
               run: Optional[SamplingRun] = None, index_block: int = -1, kv_hook=None):
    """A pre-norm ViT block where every frame attends within itself with its own CLS.

    cls: (B, T or 1, D); x: (B, T, L, D). Runs our PlainBlock and timm's Block alike (LayerScale
    `ls1`/`ls2` and drop path are honoured). Returns (cls (B, T, D), x, layout).
    """
    b, t, l, d = x.shape
    ls1, ls2 = _branch(block, "ls1"), _branch(block, "ls2")
    p = getattr(block, "drop_prob", 0.0) or getattr(getattr(block, "drop_path1", None), "drop_prob", 0.0)
    xs = with_cls(cls, x)
    out, gather, layout, reduction = frame_attention(block.attn, block.norm1, xs, (b, t, l), layout, run,
                                                     index_block, kv_hook)
    if gather is not None:
        xs = gather.frame_rows(xs)
    xs = xs + drop_path(ls1(out), p, block.training, b)
    if reduction is not None:
        xs = reduction.frame_rows(xs)
    rows = layout.key_rows
    xs = xs + drop_path(tokenwise(lambda z: ls2(block.mlp(block.norm2(z))), xs, rows), p, block.training, b)
    return xs[:, 0].reshape(b, t, d), xs[:, 1:].reshape(b, t, -1, d), layout
