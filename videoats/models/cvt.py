"""CvT (Wu et al., 2021): three stages, each a convolutional token embedding then transformer blocks whose
queries, keys and values come from a depth-wise convolution (+ BatchNorm) over the 2-D token grid, keys and
values at stride 2. A CLS token joins in the last stage only. Parameter names are the official code's
(`stage{i}.blocks.{j}.attn.conv_proj_q.conv`, ...), so its checkpoints load as they are; numerics are its
own: QuickGELU in the MLPs, LayerNorm eps 1e-5, attention scaled by the full width (dim ** -0.5).

ATS samples in the last stage (the one with a CLS), on its grid of L = h x w locations. Kept tokens live in
slots, as in every family; before each block's projections they go back to their locations in a
zero-filled (B, C, h, w) grid (absent locations hold zeros, after norm1), and the convolutions run over the
whole grid. Queries are read back at the slots. A key (stride 2, 3 x 3 window) is present when its window
holds a present token, and absent keys are masked out of attention: a dropped token is never a key of its
own, and an empty window's key (BatchNorm's bias alone) never one either. ATS scores a token (the CLS
attention to its key times its value's norm) with the key and value of the stride-2 window centred on it, or
the mean of the two or four windows it lies between (bilinear at its location; those windows all hold it,
so they are present keys). Only the last row / column of an even grid shares its windows with the one
before; those ties rank by location (`TIE_BREAK`), so a pruned grid samples as the masked one.
What is computed, and counted by `flops_spec`: the depth-wise convolutions (and BatchNorm) over the whole
grid and the key / value projections over every window (fixed per block), the token-wise layers (norms,
query projection, output projection, MLP) on the present tokens, attention of every present query against
every window (absent ones masked, still computed), and the CLS scoring row over the slots.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ats.core import SamplingRun
from ..ats.layout import Layout
from ..errors import VideoATSError
from .cost import BlockCost, CostSpec, lin, ln
from .layers import call_block, drop_path, tokenwise
from .registry import Family, ImageTransform, register_family, register_model


# relative growth of the scoring values over the grid's locations (see `Block.forward_cls`): above fp32's
# resolution between neighbours for grids up to about 2,000 locations, far below what changes a sample otherwise
TIE_BREAK = 2.0 ** -10


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the official CvT MLP activation (its weights were trained with it)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvEmbed(nn.Module):
    """Overlapping patch convolution, then LayerNorm: (B, C, H, W) -> (B, h, w, D)."""

    def __init__(self, in_chans: int, dim: int, patch: int, stride: int, padding: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))

    def out_size(self, h: int, w: int) -> Tuple[int, int]:
        (k, _), (s, _), (p, _) = self.proj.kernel_size, self.proj.stride, self.proj.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


class ConvProjection(nn.Module):
    """Depth-wise 3 x 3 convolution and BatchNorm over the grid: (B, C, h, w) -> (B, h' * w', C)."""

    def __init__(self, dim: int, kernel: int, padding: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=kernel, padding=padding, stride=stride, bias=False, groups=dim)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, grid: Tensor) -> Tensor:
        return self.bn(self.conv(grid)).flatten(2).transpose(1, 2)

    def out_size(self, h: int, w: int) -> Tuple[int, int]:
        (k, _), (s, _), (p, _) = self.conv.kernel_size, self.conv.stride, self.conv.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


class ConvAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, kernel: int = 3, stride_kv: int = 2):
        super().__init__()
        self.num_heads = num_heads
        self.scale = dim ** -0.5  # the official scale: the whole width, not a head's
        self.conv_proj_q = ConvProjection(dim, kernel, kernel // 2, 1)
        self.conv_proj_k = ConvProjection(dim, kernel, kernel // 2, stride_kv)
        self.conv_proj_v = ConvProjection(dim, kernel, kernel // 2, stride_kv)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)


def key_corners(h: int, w: int, stride: int, device) -> Tensor:
    """(4, h * w): for every grid location, the four stride-`stride` keys (row-major over the key grid) whose
    mean is its scoring key: the key centred on it (a location s * i), or the two / four it lies between
    (bilinear at the locations, key i centred on location s * i; clamped at the last key)."""
    hk, wk = (h - 1) // stride + 1, (w - 1) // stride + 1
    r, c = torch.arange(h, device=device), torch.arange(w, device=device)
    rows = [r // stride, ((r + stride - 1) // stride).clamp(max=hk - 1)]
    cols = [c // stride, ((c + stride - 1) // stride).clamp(max=wk - 1)]
    return torch.stack([(a[:, None] * wk + b[None, :]).reshape(-1) for a in rows for b in cols])


def scoring_rows(keys: Tensor, corners: Tensor) -> Tensor:
    """Keys or values (B, H, 1 + K, d), the CLS first -> one per slot (B, H, 1 + W, d), the CLS first: the mean
    of the slot's `corners` (4, B, W) (indices into the K keys)."""
    b, heads, _, d = keys.shape
    out = 0
    for idx in corners:
        pick = torch.cat([idx.new_zeros(b, 1), idx + 1], dim=1)[:, None, :, None].expand(-1, heads, -1, d)
        out = out + keys.gather(2, pick)
    return out / len(corners)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = ConvAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_prob = drop_path

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """A stage without CLS: x (B, h * w, C), every location present."""
        b, n, c = x.shape
        y = self.norm1(x)
        grid = y.transpose(1, 2).reshape(b, c, *hw)
        a = self.attn
        q = a.heads(a.proj_q(a.conv_proj_q(grid)))
        k = a.heads(a.proj_k(a.conv_proj_k(grid)))
        v = a.heads(a.proj_v(a.conv_proj_v(grid)))
        out = F.scaled_dot_product_attention(q, k, v, scale=a.scale).transpose(1, 2).reshape(b, n, c)
        x = x + drop_path(a.proj(out), self.drop_prob, self.training, b)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_prob, self.training, b)

    def forward_cls(self, xs: Tensor, hw: Tuple[int, int], layout: Layout, run: Optional[SamplingRun],
                    index: int, sampling: bool):
        """The CLS stage: xs (B, 1 + W, C), the CLS then W slots whose grid locations `run.location` holds
        (all of them in order without a run). With `sampling`, this block samples (ATS). Returns
        (xs (B, 1 + W', C), layout)."""
        b, n, c = xs.shape
        a, p, training = self.attn, self.drop_prob, self.training
        h, w = hw
        rows = layout.key_rows
        y = tokenwise(self.norm1, xs, rows)
        full = run is None or (layout.valid is None and n - 1 == h * w)  # every location present, in order
        if full:
            grid = y[:, 1:].transpose(1, 2).reshape(b, c, h, w)
            where = None
        else:
            present = layout.valid[:, 0] if layout.valid is not None else None  # (B, W)
            where = run.location[:, 0]  # (B, W) grid location of every slot
            tokens = y[:, 1:] if present is None else y[:, 1:] * present[..., None].to(y.dtype)
            grid = y.new_zeros(b, h * w, c).scatter(1, where[..., None].expand(-1, -1, c), tokens)
            grid = grid.transpose(1, 2).reshape(b, c, h, w)
        q_grid = a.conv_proj_q(grid)  # (B, h * w, C)
        q_slots = q_grid if where is None else q_grid.gather(1, where[..., None].expand(-1, -1, c))
        q = a.heads(tokenwise(a.proj_q, torch.cat([y[:, :1], q_slots], dim=1), rows))
        k = a.heads(a.proj_k(torch.cat([y[:, :1], a.conv_proj_k(grid)], dim=1)))
        v = a.heads(a.proj_v(torch.cat([y[:, :1], a.conv_proj_v(grid)], dim=1)))
        key_mask = None
        if not full:  # a key is present when its window holds a present token
            on = y.new_zeros(b, h * w).scatter(1, where, 1.0 if present is None else present.to(y.dtype))
            conv = a.conv_proj_k.conv
            held = F.max_pool2d(on.reshape(b, 1, h, w), conv.kernel_size, conv.stride, conv.padding).flatten(1) > 0
            key_mask = torch.cat([held.new_ones(b, 1), held], dim=1)[:, None, None, :]
        if sampling:
            at = torch.arange(h * w, device=xs.device).expand(b, -1) if where is None else where
            corners = key_corners(h, w, a.conv_proj_k.conv.stride[0], xs.device)[:, at]
            # the last row / column of an even grid shares its windows with the one before: ties, which the
            # sampler's sort may order either way, so a masked and a pruned grid could keep different tokens.
            # Values grow by at most TIE_BREAK with the location: tied scores then rank by location. In fp32
            # (the value norm is taken in fp32 anyway): a bf16 or fp16 factor would round to 1
            grow = 1 + TIE_BREAK * torch.cat([at.new_zeros(b, 1), at], dim=1).float() / (h * w)
            values = scoring_rows(v, corners).float() * grow[:, None, :, None]
            keep = run.sample(index, q[:, :, :1], scoring_rows(k, corners), values, a.scale, layout.frame_keys,
                              layout.valid)
            gather, layout = run.layout(index, keep)
            if gather is not None:
                q = gather.frame_rows(q)
                xs = gather.frame_rows(xs)
            rows = layout.key_rows
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=a.scale)
        out = tokenwise(a.proj, out.transpose(1, 2).reshape(b, -1, c), rows)
        xs = xs + drop_path(out, p, training, b)
        return xs + drop_path(tokenwise(lambda z: self.mlp(self.norm2(z)), xs, rows), p, training, b), layout


class Stage(nn.Module):
    def __init__(self, in_chans: int, dim: int, depth: int, num_heads: int, patch: int, stride: int, padding: int,
                 with_cls: bool, mlp_ratio: float, qkv_bias: bool, drop_path: Sequence[float]):
        super().__init__()
        self.patch_embed = ConvEmbed(in_chans, dim, patch, stride, padding)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if with_cls else None
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias, r) for r in drop_path)


@dataclass(frozen=True)
class CvTSpec:
    dims: Tuple[int, int, int] = (64, 192, 384)
    heads: Tuple[int, int, int] = (1, 3, 6)
    depths: Tuple[int, int, int] = (1, 4, 16)
    patch: Tuple[int, int, int] = (7, 3, 3)
    stride: Tuple[int, int, int] = (4, 2, 2)
    padding: Tuple[int, int, int] = (2, 1, 1)


class CvT(nn.Module):
    is_video = False
    # its sampling block scores through convolutional projections of its own (`forward_cls`), which EViT and ToMe,
    # reducing after a block's attention, do not go through
    reduces_after_attention = False
    num_frames = 1

    def __init__(self, img_size: int = 224, num_classes: int = 1000, dims=(64, 192, 384), heads=(1, 3, 6),
                 depths=(1, 4, 16), mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.1,
                 dropout_rate: float = 0.0):
        super().__init__()
        spec = CvTSpec(tuple(dims), tuple(heads), tuple(depths))
        self.spec, self.img_size, self.num_classes = spec, img_size, num_classes
        chans, stages = 3, []
        for i in range(3):
            # the official drop-path rule: per stage, linear from 0 to that stage's rate (only the last has one)
            rate = drop_path_rate if i == 2 else 0.0
            rates = [rate * j / max(spec.depths[i] - 1, 1) for j in range(spec.depths[i])]
            stages.append(Stage(chans, spec.dims[i], spec.depths[i], spec.heads[i], spec.patch[i], spec.stride[i],
                                spec.padding[i], i == 2, mlp_ratio, qkv_bias, rates))
            chans = spec.dims[i]
        self.stage0, self.stage1, self.stage2 = stages
        self.norm = nn.LayerNorm(spec.dims[2], eps=1e-5)
        self.head_drop = nn.Dropout(dropout_rate)
        self.head = nn.Linear(spec.dims[2], num_classes) if num_classes > 0 else nn.Identity()
        self.depth = spec.depths[2]  # ATS blocks count in the last stage
        self.grid_size = self.stage_size(img_size, img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.ats = None
        self.ats_trace = []
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias) if m.bias is not None else None
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.stage2.cls_token, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def stages(self):
        return (self.stage0, self.stage1, self.stage2)

    def stage_size(self, h: int, w: int, upto: int = 3) -> Tuple[int, int]:
        """The token grid after stage `upto`'s embedding (3: the last stage's)."""
        for s in self.stages()[:upto]:
            h, w = s.patch_embed.out_size(h, w)
        return h, w

    def forward_features(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise VideoATSError(f"CvT expects images (B, 3, H, W), got {tuple(images.shape)}")
        x = images
        ckpt = self.grad_checkpointing
        for stage in (self.stage0, self.stage1):
            t = stage.patch_embed(x)
            b, h, w, c = t.shape
            t = t.reshape(b, h * w, c)
            for blk in stage.blocks:
                t = call_block(blk, t, (h, w), checkpointing=ckpt)
            x = t.transpose(1, 2).reshape(b, c, h, w)
        t = self.stage2.patch_embed(x)
        b, h, w, c = t.shape
        xs = torch.cat([self.stage2.cls_token.expand(b, 1, c), t.reshape(b, h * w, c)], dim=1)
        run = SamplingRun.start(self, b, 1, h * w, xs.device)
        layout = Layout()
        for i, blk in enumerate(self.stage2.blocks):
            sampling = run is not None and run.stage(i) is not None
            xs, layout = call_block(blk.forward_cls, xs, (h, w), layout, run, i, sampling, checkpointing=ckpt)
        self.ats_trace = run.records if run is not None else []
        return self.norm(xs[:, 0])

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.head_drop(self.forward_features(images)))


def _block_cost(blk: Block) -> BlockCost:
    """What one block costs per token that passes it (the rest is fixed by the grid: `_fixed`)."""
    a = blk.attn
    width = a.proj_q.out_features
    return BlockCost(pre=ln(blk.norm1) + lin(a.proj_q), proj=lin(a.proj),
                     mlp=ln(blk.norm2) + lin(blk.mlp.fc1) + lin(blk.mlp.fc2), pair=2 * width, score=width)


def _conv(m: nn.Conv2d, positions: int) -> int:
    return m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1] * positions


def _fixed(model: CvT, h: int, w: int) -> Tuple[int, int, int]:
    """(multiply-adds that do not depend on the sample, last-stage locations, keys per query there): the first
    two stages, the embeddings, and in every last-stage block the depth-wise convolutions with their
    BatchNorm (2 per element in eval, fvcore's price) and the key / value projections over the whole grid."""
    total = 0
    for i, stage in enumerate(model.stages()):
        emb = stage.patch_embed
        h, w = emb.out_size(h, w)
        n = h * w
        total += _conv(emb.proj, n) + ln(emb.norm) * n
        for blk in stage.blocks:
            a = blk.attn
            hk, wk = a.conv_proj_k.out_size(h, w)
            nk = hk * wk
            cls = 1 if i == 2 else 0
            total += (_conv(a.conv_proj_q.conv, n) + 2 * a.conv_proj_q.bn.num_features * n
                      + 2 * (_conv(a.conv_proj_k.conv, nk) + 2 * a.conv_proj_k.bn.num_features * nk)
                      + (lin(a.proj_k) + lin(a.proj_v)) * (nk + cls))
            if i < 2:  # stages without CLS: every token, dense
                c = _block_cost(blk)
                total += (c.pre + c.proj + c.mlp) * n + c.pair * n * nk
    hk, wk = model.stage2.blocks[0].attn.conv_proj_k.out_size(h, w)
    return total, h * w, 1 + hk * wk


def flops_spec(model: CvT) -> CostSpec:
    """The last stage as a grid of one frame with a CLS; everything the sample does not change is priced by
    the input's size (`_fixed`). The final LayerNorm sees the CLS alone."""
    blocks = [_block_cost(b) for b in model.stage2.blocks]
    return CostSpec("frame", 0, blocks, head_fixed=ln(model.norm) + lin(model.head), dim=model.spec.dims[2],
                    at_size=lambda h, w: _fixed(model, h, w))


# the official test transforms: at 384 px the image resized to 384 x 384 (no crop), at 224 px the short side to
# 256 and the centre 224 crop; bicubic, ImageNet mean / std (experiments/imagenet/cvt/*.yaml)
FAMILY = register_family(__name__, Family(
    name="cvt", title="CvT", is_video=False, matches=lambda m: isinstance(m, CvT), flops_spec=flops_spec,
    head_keys=("head.weight", "head.bias"), layouts=("cvt_official", "hf_cvt"),
    image_transform=lambda size: ImageTransform(size, None if size >= 384 else 0.875, "bicubic")))


def _build(img_size: int, depths, num_classes: int, kw) -> CvT:
    return CvT(**{"img_size": img_size, "depths": depths, "num_classes": num_classes, **kw})


@register_model
def cvt_13_224(num_classes: int = 1000, **kw):
    """CvT-13 at 224 px (official: 81.6 top-1, 4.5 GFLOPs)."""
    return _build(224, (1, 2, 10), num_classes, kw)


@register_model
def cvt_21_224(num_classes: int = 1000, **kw):
    """CvT-21 at 224 px (official: 82.5 top-1, 7.1 GFLOPs)."""
    return _build(224, (1, 4, 16), num_classes, kw)


@register_model
def cvt_21_384(num_classes: int = 1000, **kw):
    """CvT-21 at 384 px (official: 83.3 top-1, 24.9 GFLOPs); tested at 384 x 384, no crop."""
    return _build(384, (1, 4, 16), num_classes, kw)


@register_model
def cvt_tiny_96(num_classes: int = 10, **kw):
    """A small CvT (widths 16/32/64, depths 1/1/4) on 96 px images (a 6 x 6 last grid), for tests."""
    arch = dict(dims=(16, 32, 64), heads=(1, 2, 4), depths=(1, 1, 4), drop_path_rate=0.0)
    return CvT(**{"img_size": 96, "num_classes": num_classes, **arch, **kw})
