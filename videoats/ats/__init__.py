"""Adaptive Token Sampling: one core (`core.py`, `sampler.py`) that every backbone calls.

`apply_ats(model, dict(blocks=[...], tokens=..., variant=...))` turns it on for a registered model or a
timm ViT, pretrained or not; `kept_tokens(model)` tells what the last forward pass kept.
"""
from __future__ import annotations

from .core import ATSConfig, SamplingRun, kept_tokens, token_masks, VARIANTS  # noqa: F401
from .sampler import cls_significance, inverse_transform_sample  # noqa: F401
from ..errors import VideoATSError


def apply_ats(model, ats):
    """Enable ATS on `model` in place (no retraining needed) and return it; `ats=None` turns it off."""
    if ats is None:
        model.ats = None
        return model
    from ..models.vit import is_timm_vit, patch_vit

    if is_timm_vit(model):
        patch_vit(model)
    if not hasattr(model, "depth") or not hasattr(model, "num_patches"):
        raise VideoATSError(f"ATS does not know how to patch a {type(model).__name__}")
    if getattr(model, "attention_type", "divided_space_time") == "joint_space_time":
        raise VideoATSError("ATS supports TimeSformer with divided_space_time or space_only attention, "
                            "not joint_space_time")
    model.ats = ATSConfig.from_any(ats).check(model.depth, model.num_frames, model.num_patches,
                                              getattr(model, "is_video", False))
    return model
