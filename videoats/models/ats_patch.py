"""Turning ATS on for a model: `apply_ats` for our backbones and for any timm ViT (ToMe's direction: the
algorithm in `videoats.ats` knows no model; the patch sits above it, with the models).

A timm ViT (DeiT-S is the model the official ATS code releases) is patched in place by swapping its class
for a subclass made once per timm class, whose `forward_features` runs the same blocks over a token grid
(T = 1) with sampling, and timm's own forward when ATS is off. The grid facts live in one record,
`model.grid`; `model.ats` / `model.ats_trace` are the two attributes the ATS core reads on every backbone.
This also works on a timm ViT that someone else built or trained ("off-the-shelf").
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial
from typing import Dict

from torch import Tensor

from ..ats.core import AFTER_ATTENTION, ATSConfig, SamplingRun
from ..ats.layout import Layout
from ..errors import VideoATSError
from .layers import call_block, grid_block


@dataclass(frozen=True)
class Grid:
    """The token grid a patched timm ViT exposes to the ATS core (our own backbones carry these facts as
    attributes: depth, num_frames, num_patches, is_video); an image is a one-frame grid."""

    depth: int
    patches: int


def is_timm_vit(model) -> bool:
    """A timm VisionTransformer (or a subclass of it); timm is not imported for the question: a model cannot be
    one unless timm's module is loaded."""
    vt = sys.modules.get("timm.models.vision_transformer")
    return vt is not None and isinstance(model, vt.VisionTransformer)


class _GridViT:
    """Mixed into a timm ViT class by `patch_vit`: the ATS forward and the grid facts."""

    grid: Grid

    depth = property(lambda self: self.grid.depth)
    num_patches = property(lambda self: self.grid.patches)
    num_frames, is_video = 1, False

    def forward_features(self, images: Tensor, attn_mask=None, **kw) -> Tensor:
        if self.ats is None:  # ATS off: timm's own forward
            self.ats_trace = []
            return super().forward_features(images, attn_mask=attn_mask, **kw)
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


_PATCHED: Dict[type, type] = {}


def patch_vit(model) -> None:
    """Route a timm ViT's forward through the ATS grid code (idempotent); ATS stays off until `apply_ats`."""
    if isinstance(model, _GridViT):
        return
    if getattr(model, "num_prefix_tokens", 1) != 1 or getattr(model, "global_pool", "token") != "token":
        raise VideoATSError("ATS on a timm ViT needs one CLS token and 'token' pooling (as DeiT has)")
    base = type(model)
    if base not in _PATCHED:  # one subclass per timm class, named as it (messages read the same)
        _PATCHED[base] = type(base.__name__, (_GridViT, base), {"__module__": __name__})
    model.__class__ = _PATCHED[base]
    model.grid = Grid(depth=len(model.blocks), patches=model.patch_embed.num_patches)
    model.ats, model.ats_trace = getattr(model, "ats", None), getattr(model, "ats_trace", [])


def apply_ats(model, ats):
    """Enable ATS on `model` in place (no retraining needed) and return it; `ats=None` turns it off."""
    if ats is None:
        model.ats = None
        return model
    if is_timm_vit(model):
        patch_vit(model)
    if not hasattr(model, "depth") or not hasattr(model, "num_patches"):
        raise VideoATSError(f"ATS does not know how to patch a {type(model).__name__}")
    if getattr(model, "attention_type", "divided_space_time") == "joint_space_time":
        raise VideoATSError("ATS supports TimeSformer with divided_space_time or space_only attention, "
                            "not joint_space_time")
    config = ATSConfig.from_any(ats).check(model.depth, model.num_frames, model.num_patches,
                                           getattr(model, "is_video", False))
    if config.selection in AFTER_ATTENTION and not getattr(model, "reduces_after_attention", True):
        raise VideoATSError(f"selection {config.selection!r} reduces tokens after a block's attention, which "
                            f"{type(model).__name__} does not support; use inverse_transform, top_k or random")
    model.ats = config
    return model
