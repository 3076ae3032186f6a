"""X-ViT (Bulat et al., 2021): ViT-B/16 on every frame with space-time mixing, and a temporal head.

Each frame has its own CLS. In every block a quarter of the key/value channels come from the next
(first eighth) and previous (second eighth) frame at the same location, within segments of 8 frames;
queries are not shifted. A one-block transformer over the per-frame CLS features gives the logits.
With ATS a token whose neighbour frame dropped that location receives zeros for those channels, as at
a segment boundary, so a dropped token never leaks into attention.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ats.core import SamplingRun
from ..ats.layout import Layout
from ..errors import VideoATSError
from .layers import PlainBlock, call_block, grid_block
from .cost import CostSpec, attn_block_cost, lin, ln, patch_cost
from .registry import Family, register_family, register_model
from .resize import resize_pos_2d, resize_time
from .timesformer import PatchEmbed


def shift_frames(x: Tensor, segments: int, fold: int) -> Tensor:
    """x: (B, S*G, N, C) per-frame tokens. Channels [0, fold) take frame t+1, [fold, 2 fold) frame t-1."""
    b, t, n, c = x.shape
    x = x.reshape(b * t // segments, segments, n, c)
    out = torch.zeros_like(x)
    out[:, :-1, :, :fold] = x[:, 1:, :, :fold]
    out[:, 1:, :, fold:2 * fold] = x[:, :-1, :, fold:2 * fold]
    out[..., 2 * fold:] = x[..., 2 * fold:]
    return out.reshape(b, t, n, c)


class TemporalHead(nn.Module):
    """X-ViT's 'vit' consensus: a learnable CLS, one transformer block over frames, then an MLP head."""

    def __init__(self, dim: int, num_heads: int, num_classes: int, dropout: float):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = PlainBlock(dim, num_heads, qkv_bias=False, eps=1e-5)
        self.mlp = nn.Sequential(nn.LayerNorm(dim, eps=1e-5), nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(dim, num_classes))

    def forward(self, frames: Tensor) -> Tensor:
        x = torch.cat([self.cls_token.expand(frames.shape[0], -1, -1), frames], dim=1)
        return self.mlp(self.encoder(x)[:, 0])


class XViT(nn.Module):
    is_video = True

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_frames: int = 16, num_classes: int = 600,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 num_segments: int = 8, shift_div: int = 8, pos_grid: int = 14, dropout_rate: float = 0.5,
                 drop_path_rate: float = 0.0):
        super().__init__()
        if num_frames % num_segments:
            raise VideoATSError(f"X-ViT needs num_frames ({num_frames}) divisible by num_segments ({num_segments})")
        self.num_frames, self.num_segments, self.img_size = num_frames, num_segments, img_size
        self.patch_size, self.depth, self.num_classes = patch_size, depth, num_classes
        self.fold = embed_dim // shift_div
        self.pos_grid = pos_grid  # the original's PatchEmbed is fixed at 224 px: a 14 x 14 position grid
        self.num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid ** 2 + 1, embed_dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, num_segments, 1, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(PlainBlock(embed_dim, num_heads, mlp_ratio, True, drop_path=r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.frame_drop = nn.Dropout(dropout_rate)
        self.temporal_head = TemporalHead(embed_dim, num_heads, num_classes, dropout_rate)
        self.ats = None
        self.ats_trace = []
        self.grad_checkpointing = False
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias) if m.bias is not None else None
        for p in (self.pos_embed, self.cls_token, self.temporal_head.cls_token):
            nn.init.trunc_normal_(p, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _kv_shift(self, k: Tensor, v: Tensor, layout: Layout, frames: int):
        """Shift the first quarter of the key/value channels across frames, at each location."""
        g, h, n, d = k.shape
        b, moving = g // frames, 2 * self.fold
        # an absent token's key and value are zero wherever the shift can read them: the masked layout's
        # token-wise layers leave absent rows at zero (`tokenwise`), a ragged layout's location-aligned grid
        # is zero where a location is absent, and an aligned layout's padding slot is padding in every frame

        def shift(z):
            z = z.permute(0, 2, 1, 3).reshape(b, frames, n, h * d)
            part = z[..., :moving]  # the patches move on their location-aligned grid, the CLS as it is
            part = torch.cat([part[:, :, :1], layout.aligned(part[:, :, 1:])], dim=2)
            part = shift_frames(part, self.num_segments, self.fold)
            part = torch.cat([part[:, :, :1], layout.unaligned(part[:, :, 1:])], dim=2)
            z = torch.cat([part, z[..., moving:]], dim=-1)
            return z.reshape(g, n, h, d).permute(0, 2, 1, 3)

        return shift(k), shift(v)

    def embed(self, video: Tensor):
        if video.dim() != 5 or video.shape[1] != 3:
            raise VideoATSError(f"X-ViT expects a video tensor (B, 3, T, H, W), got {tuple(video.shape)}")
        b, _, t, hgt, wid = video.shape
        if t % self.num_segments:
            raise VideoATSError(f"X-ViT needs a frame count divisible by {self.num_segments}, got {t}")
        x = self.patch_embed(video.transpose(1, 2).reshape(b * t, 3, hgt, wid))
        gh, gw, d = x.shape[1:]
        pos = self.pos_embed
        if (gh, gw) != (self.pos_grid, self.pos_grid):  # bicubic resize of the 14 x 14 grid
            grid = pos[:, 1:].reshape(1, self.pos_grid, self.pos_grid, d).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, gh * gw, d)], dim=1)
        time = self.temp_embed.repeat(1, t // self.num_segments, 1, 1)  # frame t gets entry t mod segments
        x = x.reshape(b, t, gh * gw, d) + pos[:, None, 1:] + time
        cls = (self.cls_token + pos[:, :1]).reshape(1, 1, d) + time[:, :, 0]
        return cls.expand(b, t, d), x

    def forward_features(self, video: Tensor) -> Tensor:
        """Per-frame features (B, T, D)."""
        cls, x = self.embed(video)
        b, t, l, _ = x.shape
        run = SamplingRun.start(self, b, t, l, x.device)

        def hook(k, v, layout):
            return self._kv_shift(k, v, layout, t)

        layout = Layout()
        for i, blk in enumerate(self.blocks):
            cls, x, layout = call_block(partial(grid_block, blk), cls, x, layout, run.stage(i) if run else None, i,
                                       hook, checkpointing=self.grad_checkpointing)
        self.ats_trace = run.records if run is not None else []
        return self.norm(cls)

    def forward(self, video: Tensor) -> Tensor:
        return self.temporal_head(self.frame_drop(self.forward_features(video)))


def flops_spec(model: "XViT") -> CostSpec:
    """A ViT per frame (per-frame CLS; the shift moves channels, it costs nothing), then the temporal head:
    one block over 1 + T tokens and an MLP."""
    th = model.temporal_head
    enc = th.encoder
    head_block = attn_block_cost(enc.norm1, enc.attn, enc.norm2, enc.mlp)
    mlp_head = sum(ln(m) + lin(m) for m in th.mlp)
    return CostSpec("frame", patch_cost(model.patch_embed),
                    [attn_block_cost(b.norm1, b.attn, b.norm2, b.mlp) for b in model.blocks],
                    head_fixed=mlp_head, head_per_frame=ln(model.norm), head_block=head_block,
                    dim=model.patch_embed.proj.out_channels)


FAMILY = register_family(__name__, Family(
    name="xvit", title="X-ViT", is_video=True, matches=lambda m: isinstance(m, XViT), flops_spec=flops_spec,
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), head_keys=("temporal_head.mlp.4.weight", "temporal_head.mlp.4.bias"),
    layouts=("xvit_official", "xvit_state_dict"),
    resize_rules={"pos_embed": (1, resize_pos_2d, "bicubic over the 2-D patch grid, as X-ViT"),
                  "temp_embed": (1, resize_time, "1-D nearest over segment frames")},
    image_init_ignored=("head.",), image_init_kept=("temp_embed", "temporal_head.")))


@register_model
def xvit_b16_16x224(num_classes: int = 600, **kw):
    """X-ViT B/16, 16 frames at 224 px (K600 release: 84.5 top-1 at 1x3 views)."""
    return XViT(**{"num_frames": 16, "num_classes": num_classes, **kw})


@register_model
def xvit_b16_8x224(num_classes: int = 600, **kw):
    """X-ViT B/16, 8 frames at 224 px."""
    return XViT(**{"num_frames": 8, "num_classes": num_classes, **kw})


@register_model
def xvit_tiny_8x32(num_classes: int = 10, **kw):
    """A 4-block, 64-wide X-ViT on 32 px frames (8 px patches), for tests and the demo."""
    arch = dict(img_size=32, patch_size=8, num_frames=8, num_classes=num_classes, embed_dim=64, depth=4,
                num_heads=4, pos_grid=4, dropout_rate=0.0)
    return XViT(**{**arch, **kw})
