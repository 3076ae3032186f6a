"""The vocabulary a family file uses to state what its blocks cost (fvcore's convention, see
`videoats.flops`): per-token, per-pair and per-row prices read off the built modules, so that overridden
widths and depths are priced as built. `videoats.flops` adds these terms up; it knows no model class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch.nn as nn


def lin(m) -> int:
    """A linear layer's multiply-adds per token (bias free); 0 for anything else (e.g. no head)."""
    return m.in_features * m.out_features if isinstance(m, nn.Linear) else 0


def ln(m) -> int:
    """fvcore's LayerNorm price per token: 5 per element with affine parameters, 4 without."""
    if isinstance(m, nn.LayerNorm):
        return int(math.prod(m.normalized_shape)) * (5 if m.weight is not None else 4)
    return 0


def patch_cost(patch_embed: nn.Module) -> int:
    """Multiply-adds of one patch token: the stem's own `macs_per_patch()` where it has one (a stem with
    more than one projection), else the patch convolution's kernel arithmetic (e.g. timm's PatchEmbed)."""
    if hasattr(patch_embed, "macs_per_patch"):
        return int(patch_embed.macs_per_patch())
    conv = patch_embed.proj
    return conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] // conv.groups


@dataclass
class BlockCost:
    pre: int = 0  # per token entering spatial/frame attention: LayerNorm + qkv
    proj: int = 0  # per query row leaving attention
    mlp: int = 0  # per token through norm2 + MLP
    pair: int = 0  # per (query, key) pair: q.k + attn.v
    score: int = 0  # per key of the ATS scoring row (and of EViT's CLS attention row)
    match: int = 0  # per (source, destination) pair of ToMe's matching: the head width (keys averaged over heads)
    t_tok: int = 0  # TimeSformer temporal: per token (norm, qkv, proj, temporal_fc)
    t_pair: int = 0  # TimeSformer temporal: per (query, key) pair


def attn_block_cost(norm1, attn, norm2, mlp) -> BlockCost:
    """A pre-norm attention block (qkv, proj, fc1/fc2 MLP)."""
    dqk = attn.qkv.out_features // 3
    return BlockCost(pre=ln(norm1) + lin(attn.qkv), proj=lin(attn.proj),
                     mlp=ln(norm2) + lin(mlp.fc1) + lin(mlp.fc2), pair=2 * dqk, score=dqk, match=dqk // attn.num_heads)


def plain_cost(b: BlockCost, tokens: int) -> int:
    """A dense pre-norm block over `tokens` tokens."""
    return (b.pre + b.proj + b.mlp) * tokens + b.pair * tokens * tokens


@dataclass
class CostSpec:
    """How a backbone's cost is laid out over its token grid (`videoats.flops` prices it)."""

    family: str  # divided | frame (per-frame CLS: X-ViT, space_only, ATS timm) | joint | vit (timm dense)
    patch: int  # patch embedding per patch
    blocks: list
    head_fixed: int  # head cost that does not depend on T
    head_per_frame: int = 0  # final LayerNorm on per-frame CLS (X-ViT)
    head_block: Optional[BlockCost] = None  # X-ViT temporal block over 1 + T tokens
    final_norm: int = 0  # per token of the final LayerNorm when it sees all tokens (timm dense)
    upsample: bool = False  # TimeSformer's nearest pos-embed resize (fvcore counts 1 per output element)
    native_patches: int = 0
    dim: int = 0
    # a model whose sampled grid is not a patch grid of the input (CvT: the last of three convolutional stages):
    # (input height, width) -> (multiply-adds the sample does not change, locations of the sampled grid, keys
    # every query of a block meets there, or 0: its own frame's tokens). With it, `patch` is 0 and attention
    # pairs are (1 + queries) x keys.
    at_size: Optional[Callable[[int, int], Tuple[int, int, int]]] = None
