"""PS-ViT (Yue et al., 2021): a ResNet stem, then progressive sampling: a few transformer layers that each
read the stem's feature map at a grid of points (bilinear), move the points by offsets they predict, and
refine the tokens; then a plain ViT encoder with a CLS token. Parameter names are the official code's
(`stem.*`, `ps_layers.{i}.transformer_layer.*`, `trans_layers.{j}.*`), so its checkpoints load as they are.

The official sampling op is a CUDA extension; ours is `F.grid_sample` (bilinear, zeros outside,
align_corners=True on the feature map's pixel centres), which computes the extension's `bilinear_interpolate`
(zero for points outside (-1, H) x (-1, W), zero for corners outside the map; tests/test_psvit.py re-states the
kernel literally). Attention is scaled by the head width (the README's evaluation; the `pretrained=True`
path of the official builders scales by the full width, which we do not offer).

ATS samples in the encoder after the progressive sampling (`trans_layers`, the blocks with a CLS) over the
sampled points as one image's tokens (T = 1, L = points), with the shared grid code (`layers.grid_block`).
"""
from __future__ import annotations

from functools import partial
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ats.core import SamplingRun
from ..ats.layout import Layout
from ..errors import VideoATSError
from .cost import CostSpec, attn_block_cost, lin, ln, plain_cost
from .layers import PlainBlock, call_block, grid_block
from .registry import Family, ImageTransform, register_family, register_model


def sample_points(features: Tensor, points: Tensor) -> Tensor:
    """Bilinear reads of a feature map at points: features (B, C, H, W), points (B, P, 2) as (y, x) in pixels
    (pixel centres at integers) -> (B, P, C); zero outside the map, as the official CUDA kernel."""
    h, w = features.shape[-2:]
    y, x = points[..., 0], points[..., 1]
    grid = torch.stack([x / (w - 1), y / (h - 1)], dim=-1) * 2 - 1  # grid_sample wants (x, y) in [-1, 1]
    out = F.grid_sample(features, grid[:, :, None, :], mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[..., 0].transpose(1, 2)


class Bottleneck(nn.Module):
    """The official stem's ResNet bottleneck (1x1, 3x3, 1x1, BatchNorm, ReLU; a 1x1 projection when widths
    differ)."""

    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                                                 nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class SamplingLayer(nn.Module):
    """One progressive sampling iteration: read the map at the points (moved by the last offsets), add the
    position embedding of where they are and the last iteration's tokens, one transformer layer, next offsets.
    The position embedding (`position`, the model's `pos_layer`) is shared by every iteration: handed in, not
    owned (the official state dict lists it under every iteration too, `checkpoint.layouts` drops those)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, feat_size: int, predict_offset: bool,
                 drop_path: float):
        super().__init__()
        self.feat_size = float(feat_size)
        self.transformer_layer = PlainBlock(dim, num_heads, mlp_ratio, qkv_bias=False, eps=1e-5, drop_path=drop_path)
        self.offset_layer = nn.Linear(dim, 2) if predict_offset else None

    def forward(self, features: Tensor, points: Tensor, offset: Tensor, previous, position: nn.Linear):
        """The official arithmetic: the map is read at point + gamma * offset (gamma = 1 for PS-ViT-B; the
        offset learns through the read), the position and the next points use the offset detached."""
        tokens = sample_points(features, points + offset)
        points = points + offset.detach()
        tokens = tokens + position(points / self.feat_size)
        if previous is not None:
            tokens = tokens + previous
        tokens = self.transformer_layer(tokens)
        offset = self.offset_layer(tokens) if self.offset_layer is not None else None
        return tokens, offset, points


class PSViT(nn.Module):
    is_video = False
    num_frames = 1

    def __init__(self, img_size: int = 224, num_points: int = 18, num_classes: int = 1000, embed_dim: int = 384,
                 depth: int = 14, num_iters: int = 4, num_heads: int = 6, mlp_ratio: float = 3.0,
                 stem_width: int = 256, downsample: int = 4, drop_path_rate: float = 0.0, dropout_rate: float = 0.0):
        super().__init__()
        self.img_size, self.num_classes, self.num_points = img_size, num_classes, num_points
        self.feat_size = img_size // downsample
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1),
                                  Bottleneck(64, 64, stem_width), Bottleneck(stem_width, 64, embed_dim))
        self.register_buffer("point_coord", self.initial_points())
        self.pos_layer = nn.Linear(2, embed_dim)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.ps_layers = nn.ModuleList(
            SamplingLayer(embed_dim, num_heads, mlp_ratio, self.feat_size, i < num_iters - 1, rates[i])
            for i in range(num_iters))
        self.trans_layers = nn.ModuleList(
            PlainBlock(embed_dim, num_heads, mlp_ratio, qkv_bias=False, eps=1e-5, drop_path=r)
            for r in rates[num_iters:])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5)
        self.head_drop = nn.Dropout(dropout_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self.depth = len(self.trans_layers)  # ATS blocks count in the encoder after sampling
        self.num_patches = num_points * num_points
        self.ats = None
        self.ats_trace = []
        self.grad_checkpointing = False
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias) if m.bias is not None else None
        for layer in self.ps_layers:  # offsets start at zero, as the official init
            if layer.offset_layer is not None:
                nn.init.zeros_(layer.offset_layer.weight)
                nn.init.zeros_(layer.offset_layer.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def initial_points(self) -> Tensor:
        """(1, P, 2) (y, x): the centres of a points x points grid of cells over the feature map, in the official
        order (x outer, y inner; attention does not see the order)."""
        cell = self.feat_size / self.num_points
        centres = torch.arange(self.num_points, dtype=torch.float32) * cell + cell / 2
        xs, ys = torch.meshgrid(centres, centres, indexing="ij")
        return torch.stack([ys, xs], dim=-1).reshape(1, -1, 2)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def sample(self, images: Tensor) -> Tensor:
        """The stem and the progressive sampling: (B, 3, H, W) -> tokens (B, P, D)."""
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.img_size, self.img_size):
            raise VideoATSError(f"PS-ViT expects images (B, 3, {self.img_size}, {self.img_size}) (its sampling grid "
                                f"is fixed to that size), got {tuple(int(n) for n in images.shape)}")
        features = self.stem(images)
        points = self.point_coord.expand(images.shape[0], -1, -1)
        offset, tokens = torch.zeros_like(points), None
        for layer in self.ps_layers:
            tokens, offset, points = call_block(layer, features, points, offset, tokens, self.pos_layer,
                                                checkpointing=self.grad_checkpointing)
            offset = offset if offset is not None else torch.zeros_like(points)
        return tokens

    def forward_features(self, images: Tensor) -> Tensor:
        tokens = self.sample(images)
        b, n, d = tokens.shape
        cls, grid = self.cls_token.expand(b, 1, d), tokens.reshape(b, 1, n, d)
        run, layout = SamplingRun.start(self, b, 1, n, tokens.device), Layout()
        for i, blk in enumerate(self.trans_layers):
            cls, grid, layout = call_block(partial(grid_block, blk), cls, grid, layout,
                                           run.stage(i) if run else None, i, checkpointing=self.grad_checkpointing)
        self.ats_trace = run.records if run is not None else []
        return self.norm(cls[:, 0])  # the head reads the CLS alone: normed alone

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.head_drop(self.forward_features(images)))


def _conv(m: nn.Conv2d, positions: int) -> int:
    return m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1] * positions


def _stem_cost(model: PSViT, h: int, w: int) -> int:
    """The stem in fvcore's convention: convolutions (bias free) and BatchNorm (2 per element, eval); ReLU and
    max pooling are not counted."""
    total = 0
    for m in model.stem.modules():
        if isinstance(m, nn.Conv2d):
            s, p, k = m.stride[0], m.padding[0], m.kernel_size[0]
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            total += _conv(m, h * w)
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * m.num_features * h * w
        elif isinstance(m, nn.MaxPool2d):
            h, w = (h + 2 * m.padding - m.kernel_size) // m.stride + 1, (w + 2 * m.padding - m.kernel_size) // m.stride + 1
    return total


def _fixed(model: PSViT, h: int, w: int) -> Tuple[int, int, int]:
    """(multiply-adds the sample does not change, points, 0: queries meet their own tokens): the stem and the
    sampling iterations (the bilinear reads at fvcore's price for `grid_sampler`, 4 per output element; the
    position embedding, one dense layer over the points, the offsets)."""
    n, dim = model.num_patches, model.pos_layer.out_features
    total = _stem_cost(model, h, w)
    for layer in model.ps_layers:
        t = layer.transformer_layer
        total += plain_cost(attn_block_cost(t.norm1, t.attn, t.norm2, t.mlp), n)
        total += (4 * dim + lin(model.pos_layer) + lin(layer.offset_layer)) * n
    return total, n, 0


def flops_spec(model: PSViT) -> CostSpec:
    blocks = [attn_block_cost(b.norm1, b.attn, b.norm2, b.mlp) for b in model.trans_layers]
    return CostSpec("frame", 0, blocks, head_fixed=ln(model.norm) + lin(model.head), dim=model.head.in_features,
                    at_size=lambda h, w: _fixed(model, h, w))


# the official evaluation: timm's eval transform with the model's default config (crop 0.9, bicubic):
# short side int(224 / 0.9) = 248, centre 224 crop, ImageNet mean / std
FAMILY = register_family(__name__, Family(
    name="psvit", title="PS-ViT", is_video=False, matches=lambda m: isinstance(m, PSViT), flops_spec=flops_spec,
    head_keys=("head.weight", "head.bias"), layouts=("psvit_official",),
    image_transform=lambda size: ImageTransform(size, 0.9, "bicubic")))


@register_model
def psvit_b18_224(num_classes: int = 1000, **kw):
    """PS-ViT-B/18 (18 x 18 points, official: 82.3 top-1, 21.3 M parameters, 8.8 GFLOPs)."""
    return PSViT(**{"num_points": 18, "num_classes": num_classes, **kw})


@register_model
def psvit_b14_224(num_classes: int = 1000, **kw):
    """PS-ViT-B/14 (14 x 14 points, official: 81.7 top-1, 5.4 GFLOPs)."""
    return PSViT(**{"num_points": 14, "num_classes": num_classes, **kw})


@register_model
def psvit_b16_224(num_classes: int = 1000, **kw):
    """PS-ViT-B/16 (16 x 16 points)."""
    return PSViT(**{"num_points": 16, "num_classes": num_classes, **kw})


@register_model
def psvit_tiny_64(num_classes: int = 10, **kw):
    """A small PS-ViT (64 wide, 6 x 6 points, 2 sampling iterations and 4 encoder blocks) on 64 px images."""
    arch = dict(img_size=64, num_points=6, embed_dim=64, depth=6, num_iters=2, num_heads=4, stem_width=32)
    return PSViT(**{"num_classes": num_classes, **arch, **kw})
