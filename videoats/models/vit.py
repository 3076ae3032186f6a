"""Image ViTs from timm (DeiT-S is the model the official ATS code releases), with ATS patched in.

The model is timm's own `VisionTransformer`, so timm checkpoints load as they are; the builders patch it
(`models/ats_patch.py`) so that `apply_ats` can route its blocks through the ATS grid code.
"""
from __future__ import annotations

from .ats_patch import is_timm_vit, patch_vit
from .cost import CostSpec, attn_block_cost, lin, ln, patch_cost
from .registry import Family, register_family, register_model
from .resize import resize_pos_timm


def _blocks_patch_head(model):
    blocks = [attn_block_cost(b.norm1, b.attn, b.norm2, b.mlp) for b in model.blocks]
    return blocks, patch_cost(model.patch_embed), lin(model.head) + ln(getattr(model, "fc_norm", None))


def flops_spec(model) -> CostSpec:
    """A timm ViT as timm runs it: dense, the final LayerNorm sees every token."""
    blocks, patch, head_fixed = _blocks_patch_head(model)
    return CostSpec("vit", patch, blocks, head_fixed=head_fixed, final_norm=ln(model.norm),
                    dim=model.patch_embed.proj.out_channels)


def ats_flops_spec(model) -> CostSpec:
    """Its ATS forward: a one-frame grid with a CLS, whose final LayerNorm sees the CLS alone."""
    blocks, patch, head_fixed = _blocks_patch_head(model)
    return CostSpec("frame", patch, blocks, head_fixed=head_fixed + ln(model.norm),
                    dim=model.patch_embed.proj.out_channels)


FAMILY = register_family(__name__, Family(
    name="vit", title="image ViT (timm)", is_video=False, matches=is_timm_vit, flops_spec=flops_spec,
    ats_flops_spec=ats_flops_spec,
    head_keys=("head.weight", "head.bias"), layouts=("timm_vit",),
    resize_rules={"pos_embed": (1, resize_pos_timm, "bicubic over the patch grid, as timm")}))


def _timm_vit(name: str, num_classes: int, **kw):
    import timm  # imported on use: it is slow to import and only the image models need it

    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)
    patch_vit(model)
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
