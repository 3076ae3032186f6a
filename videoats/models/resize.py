"""Resizing position and time embeddings to another grid or frame count: the rules each family's record
names (`Family.resize_rules`), applied when a checkpoint is loaded into a model of another size."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import VideoATSError


def resize_time(t: Tensor, n: int, dim: int = 1) -> Tensor:
    """1-D nearest over frames, as TimeSformer does (`F.interpolate` nearest: index i -> floor(i*T0/n))."""
    x = t.float().movedim(dim, -1)
    shape = x.shape
    x = F.interpolate(x.reshape(1, -1, shape[-1]), size=n, mode="nearest")
    return x.reshape(*shape[:-1], n).movedim(-1, dim).to(t.dtype)


def resize_pos_1d(pos: Tensor, tokens: int) -> Tensor:
    """TimeSformer's load_pretrained: 1-D nearest over the flattened patch sequence; the CLS entry kept."""
    patches = F.interpolate(pos[:, 1:].float().transpose(1, 2), size=tokens - 1, mode="nearest")
    return torch.cat([pos[:, :1], patches.transpose(1, 2).to(pos.dtype)], dim=1)


def resize_pos_2d(pos: Tensor, tokens: int) -> Tensor:
    """Bicubic over the square patch grid (timm and X-ViT); the CLS entry kept."""
    old, new = round((pos.shape[1] - 1) ** 0.5), round((tokens - 1) ** 0.5)
    if old * old != pos.shape[1] - 1 or new * new != tokens - 1:
        raise VideoATSError(f"cannot resize a position embedding of {pos.shape[1]} tokens to {tokens}: "
                            "the patch grids are not square")
    d = pos.shape[-1]
    grid = pos[:, 1:].float().reshape(1, old, old, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, d).to(pos.dtype)], dim=1)


def resize_pos_timm(pos: Tensor, tokens: int) -> Tensor:
    """timm's own resampling (bicubic with antialias), so that a timm ViT loads as timm would load it."""
    from timm.layers import resample_abs_pos_embed

    new = round((tokens - 1) ** 0.5)
    if new * new != tokens - 1:
        raise VideoATSError(f"cannot resize a position embedding to {tokens} tokens: the patch grid is not square")
    return resample_abs_pos_embed(pos.float(), [new, new], num_prefix_tokens=1).to(pos.dtype)
