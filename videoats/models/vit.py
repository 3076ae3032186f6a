"""Image ViTs from timm (DeiT-S is the model the official ATS code releases), with ATS patched in.

The model is timm's own `VisionTransformer`, so timm checkpoints load as they are; `apply_ats` swaps its
`forward_features` for one that runs the same blocks over a token grid (T = 1) with sampling. This also
works on a timm ViT that someone else built or trained ("off-the-shelf").
"""
from __future__ import annotations

import types
from functools import partial

from torch import Tensor

from ..ats.core import Layout, SamplingRun
from ..errors import VideoATSError
from .layers import call_block, grid_block
from .registry import register_model


def _ats_forward_features(self, images: Tensor, attn_mask=None, **kw) -> Tensor:
    if self.ats is None:  # ATS switched off again: timm's own forward
        self.ats_trace = []
        return self._dense_forward_features(images, attn_mask=attn_mask, **kw)
    if attn_mask is not None:
        raise VideoATSError("ATS does not take an external attention mask")
    x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(images))))
    prefix = getattr(self, "num_prefix_tokens", 1)
    b, n, d = x.shape
    cls, grid = x[:, :1], x[:, prefix:].reshape(b, 1, n - prefix, d)
    run, layout = SamplingRun.start(self, b, 1, n - prefix, x.device), Layout()
    checkpointing = bool(getattr(self, "grad_checkpointing", False))
    for i, blk in enumerate(self.blocks):
        cls, grid, layout = call_block(partial(grid_block, blk), cls, grid, layout, run.stage(i), i,
                                      checkpointing=checkpointing)
    self.ats_trace = run.records
    # only the CLS is read by the head ('token' pooling): norm it alone
    return self.norm(cls)


def patch_vit(model) -> None:
    """Route a timm ViT's forward through the ATS grid code (idempotent)."""
    if getattr(model, "num_prefix_tokens", 1) != 1 or getattr(model, "global_pool", "token") != "token":
        raise VideoATSError("ATS on a timm ViT needs one CLS token and 'token' pooling (as DeiT has)")
    if getattr(model, "_ats_patched", False):
        return
    model._dense_forward_features = model.forward_features
    model.forward_features = types.MethodType(_ats_forward_features, model)
    model._ats_patched = True
    model.depth = len(model.blocks)
    model.num_frames = 1
    model.num_patches = model.patch_embed.num_patches
    model.is_video = False


def is_timm_vit(model) -> bool:
    return type(model).__name__ == "VisionTransformer" and type(model).__module__.startswith("timm.")


def _timm_vit(name: str, num_classes: int, **kw):
    import timm  # imported on use: it is slow to import and only the image models need it

    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)
    model.depth, model.num_frames, model.is_video = len(model.blocks), 1, False
    model.num_patches = model.patch_embed.num_patches
    model.ats, model.ats_trace = None, []
    return model


@register_model
def deit_small_patch16_224(num_classes: int = 1000, **kw):
    """DeiT-S (timm), the backbone of the official ATS release (79.8 top-1, 4.6 GFLOPs)."""
    return _timm_vit("deit_small_patch16_224", num_classes, **kw)


@register_model
def deit_tiny_patch8_32(num_classes: int = 10, **kw):
    """A 4-block, 64-wide timm ViT on 32 px images, for tests."""
    arch = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)
    return _timm_vit("vit_tiny_patch16_224", num_classes, **{**arch, **kw})
