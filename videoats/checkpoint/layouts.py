"""Key layouts of the published checkpoints and how they map onto ours.

Our TimeSformer keys are the original's (minus its `model.` wrapper prefix), our X-ViT keys are the
original's backbone keys without `base_model.` plus a renamed temporal head, and our image ViTs are timm's
own. So only Hugging Face and X-ViT need renaming; timm ImageNet weights need the TimeSformer authors'
initialisation recipe on top (`timm_to_video`).
"""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

import torch
from torch import Tensor

# (our name, HF name) for the parts of one TimeSformer block; HF keeps qkv fused, as the original
_HF_BLOCK = [
    ("norm1", "layernorm_before"),
    ("attn.qkv", "attention.attention.qkv"),
    ("attn.proj", "attention.output.dense"),
    ("temporal_norm1", "temporal_layernorm"),
    ("temporal_attn.qkv", "temporal_attention.attention.qkv"),
    ("temporal_attn.proj", "temporal_attention.output.dense"),
    ("temporal_fc", "temporal_dense"),
    ("norm2", "layernorm_after"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
]
_HF_TOP = [
    ("cls_token", "timesformer.embeddings.cls_token"),
    ("pos_embed", "timesformer.embeddings.position_embeddings"),
    ("time_embed", "timesformer.embeddings.time_embeddings"),
    ("patch_embed.proj", "timesformer.embeddings.patch_embeddings.projection"),
    ("norm", "timesformer.layernorm"),
    ("head", "classifier"),
]
_HF_LAYER = "timesformer.encoder.layer."

# (our prefix, official X-ViT prefix), most specific first
_XVIT_PREFIXES = [
    ("temporal_head.cls_token", "consensus.cls_token"),
    ("temporal_head.encoder.", "consensus.temporal_encoder.0."),
    ("temporal_head.mlp.", "consensus.mlp_head."),
    ("", "base_model."),
]
XVIT_IGNORED = ("new_fc.",)  # the original builds it but its 'vit' consensus never calls it
TIMM_IGNORED = ("pre_logits.",)  # ImageNet-21k representation layer, which TimeSformer does not have


def _split_param(name: str) -> Tuple[str, str]:
    """'blocks.0.attn.qkv.weight' -> ('blocks.0.attn.qkv', 'weight')."""
    module, _, param = name.rpartition(".")
    return (module, param) if module else (name, "")


def _join(module: str, param: str) -> str:
    return f"{module}.{param}" if param else module


def _hf_name(ours: str) -> str:
    module, param = _split_param(ours)
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    if m:
        for a, b in _HF_BLOCK:
            if m.group(2) == a:
                return _join(f"{_HF_LAYER}{m.group(1)}.{b}", param)
        return ours
    for a, b in _HF_TOP:
        if module == a:
            return _join(b, param)
    return ours


def _our_name_from_hf(hf: str) -> str:
    for a, b in _HF_TOP:  # whole-key matches (cls_token, ...) and module prefixes
        if hf == b:
            return a
        if hf.startswith(b + ".") and hf[len(b) + 1:] in ("weight", "bias"):
            return f"{a}.{hf[len(b) + 1:]}"
    m = re.fullmatch(re.escape(_HF_LAYER) + r"(\d+)\.(.+)\.(weight|bias)", hf)
    if m:
        for a, b in _HF_BLOCK:
            if m.group(2) == b:
                return f"blocks.{m.group(1)}.{a}.{m.group(3)}"
    return hf  # unknown: keep the name so the strict check can show it


def to_hf_timesformer(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Our (= the original's) TimeSformer keys -> Hugging Face `TimesformerForVideoClassification` keys."""
    return {_hf_name(k): v for k, v in state_dict.items()}


def from_hf_timesformer(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    sd = dict(state_dict)
    if not any(k.startswith("timesformer.") for k in sd) and any(k.startswith("encoder.layer.") for k in sd):
        sd = {f"timesformer.{k}": v for k, v in sd.items()}  # a bare TimesformerModel (no classifier)
    return {_our_name_from_hf(k): v for k, v in sd.items()}


def to_official_timesformer(state_dict: Dict[str, Tensor], prefix: str = "model.") -> Dict[str, Tensor]:
    """Our TimeSformer keys -> the keys of an official `.pyth` `model_state` (the wrapper adds `model.`)."""
    return {prefix + k: v for k, v in state_dict.items()}


def to_official_xvit(state_dict: Dict[str, Tensor], with_new_fc: bool = True) -> Dict[str, Tensor]:
    """Our X-ViT keys -> the original's. `with_new_fc` adds its unused `new_fc` (zeros), which the original
    model owns, so that its strict `load_state_dict` accepts the result."""
    out = {}
    for k, v in state_dict.items():
        for ours, theirs in _XVIT_PREFIXES:
            if k.startswith(ours):
                out[theirs + k[len(ours):]] = v
                break
    head = state_dict.get("temporal_head.mlp.4.weight")
    if with_new_fc and head is not None:
        out["new_fc.weight"] = torch.zeros_like(head)
        out["new_fc.bias"] = torch.zeros(head.shape[0], dtype=head.dtype)
    return out


def from_official_xvit(state_dict: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """Official X-ViT keys -> ours, and the keys it has that we knowingly drop."""
    out, ignored = {}, []
    for k, v in state_dict.items():
        if k.startswith(XVIT_IGNORED):
            ignored.append(k)
            continue
        for ours, theirs in _XVIT_PREFIXES:
            if k.startswith(theirs):
                out[ours + k[len(theirs):]] = v
                break
        else:
            out[k] = v
    return out, ignored


# CvT: our keys are the official ones (`microsoft/CvT`); (ours, Hugging Face) for the parts of a stage and of a
# block, most specific first (`CvtForImageClassification`, `convert_cvt_original_pytorch_checkpoint_to_pytorch`)
_CVT_STAGE = [
    ("patch_embed.proj.", "embedding.convolution_embeddings.projection."),
    ("patch_embed.norm.", "embedding.convolution_embeddings.normalization."),
    ("cls_token", "cls_token"),
]
_CVT_BLOCK = [
    (f"attn.conv_proj_{x}.{a}.", f"attention.attention.convolution_projection_{name}.convolution_projection.{b}.")
    for x, name in (("q", "query"), ("k", "key"), ("v", "value"))
    for a, b in (("conv", "convolution"), ("bn", "normalization"))
] + [(f"attn.proj_{x}.", f"attention.attention.projection_{name}.")
     for x, name in (("q", "query"), ("k", "key"), ("v", "value"))] + [
    ("attn.proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
    ("norm1.", "layernorm_before."),
    ("norm2.", "layernorm_after."),
]
_CVT_TOP = [("norm.", "layernorm."), ("head.", "classifier.")]
_HF_CVT = "cvt.encoder.stages."


def _swap(key: str, pairs, forward: bool) -> str:
    for ours, theirs in pairs:
        a, b = (ours, theirs) if forward else (theirs, ours)
        if key.startswith(a):
            return b + key[len(a):]
    return key


def _cvt_to_hf(key: str) -> str:
    m = re.fullmatch(r"stage(\d+)\.blocks\.(\d+)\.(.+)", key)
    if m:
        return f"{_HF_CVT}{m.group(1)}.layers.{m.group(2)}." + _swap(m.group(3), _CVT_BLOCK, True)
    m = re.fullmatch(r"stage(\d+)\.(.+)", key)
    if m:
        return f"{_HF_CVT}{m.group(1)}." + _swap(m.group(2), _CVT_STAGE, True)
    return _swap(key, _CVT_TOP, True)


def _cvt_from_hf(key: str) -> str:
    m = re.fullmatch(re.escape(_HF_CVT) + r"(\d+)\.layers\.(\d+)\.(.+)", key)
    if m:
        return f"stage{m.group(1)}.blocks.{m.group(2)}." + _swap(m.group(3), _CVT_BLOCK, False)
    m = re.fullmatch(re.escape(_HF_CVT) + r"(\d+)\.(.+)", key)
    if m:
        return f"stage{m.group(1)}." + _swap(m.group(2), _CVT_STAGE, False)
    return _swap(key, _CVT_TOP, False)


def to_hf_cvt(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Our (= the official) CvT keys -> Hugging Face `CvtForImageClassification` keys."""
    return {_cvt_to_hf(k): v for k, v in state_dict.items()}


def from_hf_cvt(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    sd = dict(state_dict)
    if not any(k.startswith("cvt.") for k in sd):  # a bare CvtModel (no classifier)
        sd = {f"cvt.{k}": v for k, v in sd.items()}
    return {_cvt_from_hf(k): v for k, v in sd.items()}


# PS-ViT: our keys are the official ones, except that the official model also lists its shared position layer
# (`pos_layer`) under every sampling iteration, `ps_layers.{i}.position_layer.*`: the same tensor again
_PSVIT_SHARED = re.compile(r"ps_layers\.\d+\.position_layer\.(weight|bias)$")


def from_official_psvit(state_dict: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """Official PS-ViT keys -> ours, and the per-iteration copies of the shared position layer it drops."""
    dropped = [k for k in state_dict if _PSVIT_SHARED.match(k)]
    return {k: v for k, v in state_dict.items() if k not in dropped}, dropped


def to_official_psvit(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Our PS-ViT keys -> the official model's (the shared position layer listed under every iteration too)."""
    out = dict(state_dict)
    iterations = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("ps_layers.")})
    for i in iterations:
        for p in ("weight", "bias"):
            out[f"ps_layers.{i}.position_layer.{p}"] = state_dict[f"pos_layer.{p}"]
    return out


def detect_layout(sd: Dict[str, Tensor]) -> str:
    """Name the layout of a (prefix-stripped) state dict from its keys alone."""
    keys = set(sd)
    if any(k.startswith((_HF_CVT, "encoder.stages.")) for k in keys):
        return "hf_cvt"
    if any(re.match(r"stage\d+\.blocks\.\d+\.attn\.conv_proj_q\.", k) for k in keys):
        return "cvt_official"
    if any(k.startswith("ps_layers.") for k in keys) and "point_coord" in keys:
        return "psvit_official"
    if any(k.startswith(("timesformer.", "classifier.", "embeddings.patch_embeddings")) for k in keys):
        return "hf_timesformer"
    if any(k.startswith(("base_model.", "consensus.", "new_fc.")) for k in keys):
        return "xvit_official"
    if "time_embed" in keys or any(".temporal_attn." in k or ".temporal_fc." in k for k in keys):
        return "timesformer_official"
    if "temp_embed" in keys or any(k.startswith("temporal_head.") for k in keys):
        return "xvit_state_dict"
    if "pos_embed" in keys and any(re.match(r"blocks\.\d+\.attn\.qkv\.weight$", k) for k in keys):
        return "timm_vit"
    return "unknown"


def to_our_keys(sd: Dict[str, Tensor], layout: str) -> Tuple[Dict[str, Tensor], List[str]]:
    """A state dict of `layout` in our key names, and the keys it has that we knowingly drop."""
    if layout == "hf_timesformer":
        return from_hf_timesformer(sd), []
    if layout == "hf_cvt":
        return from_hf_cvt(sd), []
    if layout == "psvit_official":
        return from_official_psvit(sd)
    if layout == "xvit_official":
        return from_official_xvit(sd)
    return sd, []
