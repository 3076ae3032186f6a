"""TimeSformer (Bertasius et al., 2021) with the original's parameter names and numerics.

Patch tokens live on a (B, T, L, D) grid (the original's space-major `1 + n*T + t` order is only a
layout; attention does not see it) and the single CLS token is kept apart, (B, 1, D). In divided
space-time attention the CLS is left out of temporal attention, copied into every frame for spatial
attention, and its per-frame outputs are averaged; that per-frame CLS row is what ATS scores.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ats.core import SamplingRun
from ..ats.layout import Layout, gather_slots
from ..errors import VideoATSError
from .layers import (Attention, Mlp, PlainBlock, attend, call_block, drop_path, frame_attention, grid_block,
                     split_heads, tokenwise, with_cls)
from .cost import CostSpec, attn_block_cost, lin, ln, patch_cost
from .registry import Family, register_family, register_model
from .resize import resize_pos_1d, resize_time

ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")
STEMS = ("patch", "tubelet")


class PatchEmbed(nn.Module):
    """The original stem: every frame is cut into p x p patches on its own (a frame-blind projection)."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, frames: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, h, w, D)."""
        return self.proj(frames).permute(0, 2, 3, 1)

    def embed_video(self, video: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B * T, h, w, D), frame by frame."""
        b, c, t, hgt, wid = video.shape
        return self(video.transpose(1, 2).reshape(b * t, c, hgt, wid))

    def macs_per_patch(self) -> int:
        """Multiply-adds of one output token (fvcore's convention: bias free), for the GFLOPs count."""
        k = self.proj.kernel_size
        return self.proj.out_channels * self.proj.in_channels * k[0] * k[1]


class TubeletEmbed(PatchEmbed):
    """A 3-frame tubelet stem: the centre frame through the usual projection `proj` (so a frame stem's
    weights load into it), plus `proj_context` of frames t-1 and t+1, zero beyond the clip's ends.

    Why: a from-scratch TimeSformer whose stem sees one frame stays blind to frame order on a small motion
    benchmark (its temporal paths start closed); seeing the neighbours gives every token its local motion.
    It equals a Conv3d with kernel (3, p, p), stride (1, p, p) and temporal padding 1, and keeps T tokens per
    location, so temporal attention and ATS work on the same (B, T, L) grid as with the frame stem.
    """

    def __init__(self, patch_size: int, dim: int):
        super().__init__(patch_size, dim)
        self.proj_context = nn.Conv2d(6, dim, kernel_size=patch_size, stride=patch_size, bias=False)

    def embed_video(self, video: Tensor) -> Tensor:
        b, c, t, hgt, wid = video.shape
        zero = video.new_zeros(b, c, 1, hgt, wid)
        before = torch.cat([zero, video[:, :, :-1]], dim=2)
        after = torch.cat([video[:, :, 1:], zero], dim=2)
        context = torch.cat([before, after], dim=1).transpose(1, 2).reshape(b * t, 2 * c, hgt, wid)
        return super().embed_video(video) + self.proj_context(context).permute(0, 2, 3, 1)

    def macs_per_patch(self) -> int:
        k = self.proj_context.kernel_size
        return super().macs_per_patch() + self.proj_context.out_channels * self.proj_context.in_channels * k[0] * k[1]


class DividedBlock(nn.Module):
    """Temporal attention (per location, CLS excluded), then spatial attention (per frame), then MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.temporal_norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_prob = drop_path

    def forward(self, cls: Tensor, x: Tensor, layout: Layout, run: Optional[SamplingRun], index: int):
        b, t, _, d = x.shape
        p, training = self.drop_prob, self.training
        # temporal: every location attends over its frames. The token-wise layers run on the slots, where a
        # ragged grid is (nearly) full; only q, k, v move to the location-aligned grid (wider: the union of the
        # locations the frames kept) and the attention output moves back
        rows = layout.token_rows
        qkv = layout.aligned(tokenwise(lambda z: self.temporal_attn.qkv(self.temporal_norm1(z)), x, rows))
        l = qkv.shape[2]
        q, k, v = split_heads(qkv.transpose(1, 2).reshape(b * l, t, -1), self.temporal_attn.num_heads)
        rt = layout.unaligned(attend(q, k, v, layout.temporal_mask).reshape(b, l, t, d).transpose(1, 2))
        rt = tokenwise(lambda z: self.temporal_fc(self.temporal_attn.proj(z)), rt, rows)
        x = x + drop_path(rt, p, training, b)
        # spatial: every frame attends within itself, with its own copy of the CLS
        xs = with_cls(cls, x)
        out, slots, layout, reduction = frame_attention(self.attn, self.norm1, xs, (b, t, x.shape[2]), layout, run,
                                                        index)
        x = gather_slots(x, slots) + drop_path(out[:, 1:].reshape(b, t, -1, d), p, training, b)
        if reduction is not None:  # EViT, ToMe: reduce after the attention residual, before the MLP
            x = reduction.grid(x)
        cls = cls + drop_path(out[:, 0].reshape(b, t, d).mean(dim=1, keepdim=True), p, training, b)
        # MLP on present tokens only
        x = x + drop_path(tokenwise(lambda z: self.mlp(self.norm2(z)), x, layout.token_rows), p, training, b)
        cls = cls + drop_path(self.mlp(self.norm2(cls)), p, training, b)
        return cls, x, layout


class TimeSformer(nn.Module):
    is_video = True

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_frames: int = 8, num_classes: int = 400,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, attention_type: str = "divided_space_time", drop_path_rate: float = 0.1,
                 dropout_rate: float = 0.0, stem: str = "patch"):
        super().__init__()
        if attention_type not in ATTENTION_TYPES:
            raise VideoATSError(f"unknown attention_type {attention_type!r}; choose one of {ATTENTION_TYPES}")
        if stem not in STEMS:
            raise VideoATSError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
        if img_size % patch_size:
            raise VideoATSError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.attention_type, self.num_frames, self.img_size = attention_type, num_frames, img_size
        self.patch_size, self.depth, self.num_classes = patch_size, depth, num_classes
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.patch_embed = (TubeletEmbed if stem == "tubelet" else PatchEmbed)(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        if attention_type != "space_only":
            self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        if attention_type == "divided_space_time":
            self.blocks = nn.ModuleList(DividedBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, r) for r in rates)
        else:
            self.blocks = nn.ModuleList(PlainBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=r)
                                        for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(dropout_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.ats = None
        self.ats_trace = []
        self.grad_checkpointing = False
        self._init_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _init_weights(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias) if m.bias is not None else None
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:  # temporal residuals start closed, as the original initialises them
            if hasattr(blk, "temporal_fc"):
                nn.init.zeros_(blk.temporal_fc.weight)
                nn.init.zeros_(blk.temporal_fc.bias)

    def embed(self, video: Tensor):
        """(B, 3, T, H, W) -> CLS (B, 1, D) and patch grid (B, T, L, D), with position and time embeddings."""
        if video.dim() != 5 or video.shape[1] != 3:
            raise VideoATSError(f"TimeSformer expects a video tensor (B, 3, T, H, W), got {tuple(video.shape)}")
        b, _, t, hgt, wid = video.shape
        x = self.patch_embed.embed_video(video)
        gh, gw, d = x.shape[1:]
        pos = self.pos_embed
        if gh * gw != self.num_patches:  # 2-D nearest resize of the patch grid, as the original does
            grid = pos[:, 1:].reshape(1, self.grid_size, self.grid_size, d).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(gh, gw), mode="nearest").permute(0, 2, 3, 1).reshape(1, gh * gw, d)
            pos = torch.cat([pos[:, :1], grid], dim=1)
        x = x.reshape(b, t, gh * gw, d) + pos[:, None, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(b, 1, d)
        if self.attention_type != "space_only":
            time = self.time_embed
            if t != time.shape[1]:  # 1-D nearest resize over frames
                time = F.interpolate(time.transpose(1, 2), size=t, mode="nearest").transpose(1, 2)
            x = x + time[:, :, None, :]
        return cls, x

    def forward_features(self, video: Tensor) -> Tensor:
        cls, x = self.embed(video)
        b, t, l, d = x.shape
        run = SamplingRun.start(self, b, t, l, x.device, divided=self.attention_type == "divided_space_time")
        layout = Layout()
        if self.attention_type == "joint_space_time":
            tokens = torch.cat([cls, x.reshape(b, t * l, d)], dim=1)
            for blk in self.blocks:
                tokens = call_block(blk, tokens, checkpointing=self.grad_checkpointing)
            return self.norm(tokens[:, 0])
        if self.attention_type == "space_only":
            cls = cls.expand(b, t, d)
        for i, blk in enumerate(self.blocks):
            stage = run.stage(i) if run else None
            step = blk if self.attention_type == "divided_space_time" else partial(grid_block, blk)
            cls, x, layout = call_block(step, cls, x, layout, stage, i, checkpointing=self.grad_checkpointing)
        self.ats_trace = run.records if run is not None else []
        return self.norm(cls.mean(dim=1))  # space_only averages its per-frame CLS; otherwise T = 1

    def forward(self, video: Tensor) -> Tensor:
        return self.head(self.head_drop(self.forward_features(video)))


def flops_spec(model: "TimeSformer") -> CostSpec:
    """Cost terms read off the built modules (divided: spatial + temporal attention; space_only: per-frame
    CLS; joint: one sequence over the clip)."""
    blocks, kind = [], model.attention_type
    for blk in model.blocks:
        b = attn_block_cost(blk.norm1, blk.attn, blk.norm2, blk.mlp)
        if kind == "divided_space_time":
            ta = blk.temporal_attn
            b.t_tok = ln(blk.temporal_norm1) + lin(ta.qkv) + lin(ta.proj) + lin(blk.temporal_fc)
            b.t_pair = 2 * (ta.qkv.out_features // 3)
        blocks.append(b)
    layout = {"divided_space_time": "divided", "space_only": "frame", "joint_space_time": "joint"}[kind]
    return CostSpec(layout, patch_cost(model.patch_embed), blocks, head_fixed=ln(model.norm) + lin(model.head),
                    upsample=True, native_patches=model.num_patches, dim=model.patch_embed.proj.out_channels)


FAMILY = register_family(__name__, Family(
    name="timesformer", title="TimeSformer", is_video=True, matches=lambda m: isinstance(m, TimeSformer),
    flops_spec=flops_spec, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225),
    head_keys=("head.weight", "head.bias"), layouts=("timesformer_official", "hf_timesformer"),
    resize_rules={"pos_embed": (1, resize_pos_1d, "1-D nearest over the flattened patches, as TimeSformer"),
                  "time_embed": (1, resize_time, "1-D nearest over frames")}))


def _build(num_frames, img_size, num_classes, kw, **arch):
    arch.update(num_frames=num_frames, img_size=img_size, num_classes=num_classes)
    arch.update(kw)
    return TimeSformer(**arch)


@register_model
def timesformer_8x224(num_classes: int = 600, **kw):
    """TimeSformer (divided space-time), 8 frames at 224 px, ViT-B/16."""
    return _build(8, 224, num_classes, kw)


@register_model
def timesformer_hr_16x448(num_classes: int = 600, **kw):
    """TimeSformer-HR: 16 frames at 448 px."""
    return _build(16, 448, num_classes, kw)


@register_model
def timesformer_l_96x224(num_classes: int = 600, **kw):
    """TimeSformer-L: 96 frames at 224 px."""
    return _build(96, 224, num_classes, kw)


@register_model
def timesformer_tiny_8x32(num_classes: int = 10, **kw):
    """A 4-block, 64-wide TimeSformer on 32 px frames (8 px patches), for tests and the demo."""
    return _build(8, 32, num_classes, kw, patch_size=8, embed_dim=64, depth=4, num_heads=4, drop_path_rate=0.0)


@register_model
def timesformer_tiny_8x64(num_classes: int = 10, **kw):
    """The benchmark model of `videoats demo`: 4 blocks, 64 wide, 64 px frames in 8 px patches (64 tokens
    per frame), with the 3-frame tubelet stem so that it learns motion from scratch in minutes on a CPU."""
    return _build(8, 64, num_classes, kw, patch_size=8, embed_dim=64, depth=4, num_heads=4, drop_path_rate=0.0,
                  stem="tubelet")
