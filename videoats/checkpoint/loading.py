"""Strict loading: every model tensor must come from the checkpoint, by name and shape, or by a stated rule.

The rules are the ones the original code applies on purpose: position/time embeddings resized when the
resolution or frame count differs, a new head when the class count differs (only when asked), and the
TimeSformer authors' ImageNet initialisation. Anything else that does not fit is an error naming the keys,
because a silently skipped tensor (what the original loaders do) is a model that quietly predicts nonsense.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import VideoATSError
from .files import FORMAT_TAG, RawCheckpoint, read_checkpoint
from .layouts import TIMM_IGNORED, detect_layout, from_hf_timesformer, from_official_xvit

FAMILY_OF_LAYOUT = {"hf_timesformer": "timesformer", "timesformer_official": "timesformer",
                    "xvit_official": "xvit", "xvit_state_dict": "xvit", "timm_vit": "vit"}
FAMILY_TEXT = {"timesformer": "TimeSformer", "xvit": "X-ViT", "vit": "image ViT (timm)", "other": "model"}
HEAD_KEYS = {"timesformer": ("head.weight", "head.bias"), "vit": ("head.weight", "head.bias"),
             "xvit": ("temporal_head.mlp.4.weight", "temporal_head.mlp.4.bias")}
META_KEYS = ("model_name", "num_classes", "label_names", "config", "format_version", "epoch", "cfg", "hf_config")
SHOW = 5  # keys named in an error message


@dataclass
class LoadReport:
    """What `load_checkpoint` did, so that a user can see that nothing was skipped by accident."""

    source_format: str
    path: str
    mapped: List[str] = field(default_factory=list)  # model keys taken as they are (possibly renamed)
    resized: Dict[str, str] = field(default_factory=dict)  # key -> "old -> new (how)"
    initialized: Dict[str, str] = field(default_factory=dict)  # key -> rule (ImageNet init of a video model)
    ignored: List[str] = field(default_factory=list)  # checkpoint keys known to be unused
    missing: List[str] = field(default_factory=list)  # only with strict=False
    unexpected: List[str] = field(default_factory=list)  # only with strict=False
    mismatched: List[str] = field(default_factory=list)  # only with strict=False
    metadata: Dict[str, Any] = field(default_factory=dict)  # model_name, label_names, config, ...
    container: Optional[str] = None
    stripped_prefixes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{self.source_format}: {len(self.mapped)} mapped"]
        for name in ("resized", "initialized", "ignored", "missing", "unexpected", "mismatched"):
            items = getattr(self, name)
            if items:
                parts.append(f"{len(items)} {name} ({', '.join(list(items)[:3])}{', ...' if len(items) > 3 else ''})")
        return "; ".join(parts)


def model_family(model: nn.Module) -> str:
    from timm.models.vision_transformer import VisionTransformer

    from ..models.timesformer import TimeSformer
    from ..models.xvit import XViT

    if isinstance(model, TimeSformer):
        return "timesformer"
    if isinstance(model, XViT):
        return "xvit"
    if isinstance(model, VisionTransformer):
        return "vit"
    return "other"


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def _listing(keys, sd: Optional[Dict[str, Tensor]] = None) -> str:
    keys = list(keys)
    shown = [f"{k} {_shape(sd[k])}" if sd is not None and k in sd else k for k in keys[:SHOW]]
    more = f", ... ({len(keys)} in all)" if len(keys) > SHOW else ""
    return ", ".join(shown) + more


# ------------------------------------------------------------------------------------------ resizing

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


def _resize_rules(family: str):
    """key -> (token dim, function(tensor, new length), how)."""
    if family == "timesformer":
        return {"pos_embed": (1, resize_pos_1d, "1-D nearest over the flattened patches, as TimeSformer"),
                "time_embed": (1, resize_time, "1-D nearest over frames")}
    if family == "xvit":
        return {"pos_embed": (1, resize_pos_2d, "bicubic over the 2-D patch grid, as X-ViT"),
                "temp_embed": (1, resize_time, "1-D nearest over segment frames")}
    if family == "vit":
        return {"pos_embed": (1, resize_pos_timm, "bicubic over the patch grid, as timm")}
    return {}


# ------------------------------------------------------------------------------- ImageNet init

def timm_to_video(sd: Dict[str, Tensor], model_sd: Dict[str, Tensor], family: str, report: LoadReport):
    """ImageNet ViT weights -> a video model, as the TimeSformer authors initialise: temporal attention and
    its norm copied from the spatial ones, temporal_fc and time_embed zero (the video model starts as the
    image model applied per frame); X-ViT keeps its temporal embedding and head at their init."""
    if "dist_token" in sd or any(k.startswith("head_dist.") for k in sd):
        raise VideoATSError("distilled DeiT weights (with dist_token) are not supported for video init; "
                            "use the non-distilled DeiT or ViT weights")
    out = {}
    for k, v in sd.items():
        if k.startswith(TIMM_IGNORED) or (family == "xvit" and k.startswith("head.")):
            report.ignored.append(k)
        else:
            out[k] = v
    w = out.get("patch_embed.proj.weight")
    target = model_sd.get("patch_embed.proj.weight")
    if w is not None and target is not None and w.dim() == 2 and w.numel() == target.numel():
        out["patch_embed.proj.weight"] = w.reshape(target.shape)  # old JAX-converted ViTs store it flat
    for k, v in model_sd.items():
        if k in out:
            continue
        if ".temporal_attn." in k or ".temporal_norm1." in k:
            src = k.replace(".temporal_attn.", ".attn.").replace(".temporal_norm1.", ".norm1.")
            if src in out:
                out[k] = out[src].clone()
                report.initialized[k] = f"copy of {src}"
        elif ".temporal_fc." in k or k == "time_embed":
            out[k] = torch.zeros_like(v)
            report.initialized[k] = "zero"
        elif family == "xvit" and (k == "temp_embed" or k.startswith("temporal_head.")):
            out[k] = v.clone()
            report.initialized[k] = "model init (not in image weights)"
    return out


# ------------------------------------------------------------------------------------ matching

def _blocks(keys) -> int:
    idx = {int(m.group(1)) for k in keys for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    return len(idx)


def _new_head(like: Tensor) -> Tensor:
    t = torch.empty_like(like, dtype=torch.float32)
    if t.dim() > 1:
        nn.init.trunc_normal_(t, std=0.02)
    else:
        nn.init.zeros_(t)
    return t.to(like.dtype)


def _to_our_layout(raw: RawCheckpoint, model: nn.Module, family: str, report: LoadReport):
    """(state dict in our key names, the checkpoint's model family, whether it is an ImageNet init)."""
    sd = raw.state_dict
    layout = detect_layout(sd)
    if raw.meta.get("format") == FORMAT_TAG:
        report.source_format = "videoats"
    else:
        report.source_format = layout
    if layout == "hf_timesformer":
        sd = from_hf_timesformer(sd)
    elif layout == "xvit_official":
        sd, ignored = from_official_xvit(sd)
        report.ignored.extend(ignored)
    src_family = FAMILY_OF_LAYOUT.get(layout, "other")
    if layout == "unknown" and family != "other":
        raise VideoATSError(f"{raw.path}: unrecognised checkpoint layout (keys like {_listing(sorted(sd))}); "
                            "expected an official TimeSformer/X-ViT, Hugging Face, timm or videoats checkpoint")
    # image ViT weights into a video model: the ImageNet init (a no-op for space_only TimeSformer)
    init = src_family == "vit" and family in ("timesformer", "xvit")
    if family != "other" and src_family != family and not init and layout != "unknown":
        raise VideoATSError(
            f"{raw.path} holds {FAMILY_TEXT[src_family]} weights ({report.source_format}) but model "
            f"{getattr(model, 'model_name', type(model).__name__)} is a {FAMILY_TEXT[family]}: "
            "build the matching model (e.g. --model with the checkpoint's architecture)")
    return sd, init


def load_checkpoint(model: nn.Module, path_or_dir, strict: bool = True, allow_head_reset: bool = False) -> LoadReport:
    """Load any checkpoint layout videoats knows into `model` (in place) and say what was done.

    `allow_head_reset=True` accepts a checkpoint with another class count and starts a new head (as when
    fine-tuning); ImageNet weights into a video model always get a new head, as the TimeSformer authors do.
    `strict=False` loads what fits and lists the rest in the report instead of failing.
    """
    raw = read_checkpoint(path_or_dir)
    name = getattr(model, "model_name", type(model).__name__)
    family = model_family(model)
    report = LoadReport(source_format="", path=raw.path, container=raw.container, stripped_prefixes=raw.stripped,
                        metadata={k: raw.meta[k] for k in META_KEYS if k in raw.meta})
    sd, init = _to_our_layout(raw, model, family, report)
    model_sd = model.state_dict()
    where = f"checkpoint {raw.path} ({report.source_format})"
    saved_as = raw.meta.get("model_name")
    hint = f" (it was saved from {saved_as})" if saved_as and saved_as != name else ""
    if init:
        sd = timm_to_video(sd, model_sd, family, report)
    n_ckpt, n_model = _blocks(sd), _blocks(model_sd)
    if n_ckpt and n_model and n_ckpt != n_model:
        raise VideoATSError(f"{where} has {n_ckpt} blocks but model {name} has {n_model}{hint}: it is for "
                            "another architecture; build the model it was made for")
    for k in ("norm.weight", "cls_token"):
        if k in sd and k in model_sd and sd[k].shape[-1] != model_sd[k].shape[-1]:
            raise VideoATSError(f"{where} has width {sd[k].shape[-1]} but model {name} has "
                                f"{model_sd[k].shape[-1]}{hint}: it is for another architecture")
    # head: a different class count is refused unless asked for (or implied by an ImageNet init)
    head_keys = [k for k in HEAD_KEYS.get(family, ()) if k in model_sd]
    head_differs = [k for k in head_keys if k not in sd or sd[k].shape != model_sd[k].shape]
    if head_differs:
        w = sd.get(head_keys[0]) if head_keys else None
        had = f"{w.shape[0]} classes" if w is not None else "no classifier"
        want = model_sd[head_keys[0]].shape[0]
        if not (allow_head_reset or (init and report.source_format != "videoats")):
            raise VideoATSError(f"{where} has {had} but model {name} has {want}{hint}: build the model with the "
                                "checkpoint's class count (--num-classes), or allow a new head "
                                "(allow_head_reset=True / --reset-head)")
        for k in head_keys:
            old = _shape(sd[k]) if k in sd else "absent"
            sd[k] = _new_head(model_sd[k])
            report.resized[k] = f"{old} -> {_shape(model_sd[k])} (new head for {want} classes, re-initialised)"
    for k in list(sd):
        if k not in model_sd and allow_head_reset and k.startswith(tuple(h.rsplit(".", 1)[0] + "." for h in
                                                                         HEAD_KEYS.get(family, ()))):
            report.ignored.append(k)  # a head the (head-less) model does not have
            del sd[k]
    # position/time embeddings: resized when only their token count differs
    for k, (dim, fn, how) in _resize_rules(family).items():
        if k in sd and k in model_sd and sd[k].shape != model_sd[k].shape:
            a, b = sd[k].shape, model_sd[k].shape
            if len(a) == len(b) and all(x == y for i, (x, y) in enumerate(zip(a, b)) if i != dim):
                sd[k] = fn(sd[k], b[dim])
                report.resized[k] = f"{list(a)} -> {list(b)} ({how})"
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    mismatched = [k for k in sd if k in model_sd and sd[k].shape != model_sd[k].shape]
    if strict and (missing or unexpected or mismatched):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing, model_sd)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected, sd)}")
        if mismatched:
            shown = [f"{k} checkpoint {_shape(sd[k])} vs model {_shape(model_sd[k])}" for k in mismatched[:SHOW]]
            more = f", ... ({len(mismatched)} in all)" if len(mismatched) > SHOW else ""
            parts.append(f"{len(mismatched)} mis-shaped: {', '.join(shown)}{more}")
        raise VideoATSError(f"{where} does not fit model {name}{hint}: {'; '.join(parts)}; use the checkpoint's "
                            "own architecture, or strict=False to load only what fits")
    report.missing, report.unexpected, report.mismatched = missing, unexpected, mismatched
    final = dict(model_sd)
    for k, v in sd.items():
        if k in model_sd and v.shape == model_sd[k].shape:
            final[k] = v
            if k not in report.resized and k not in report.initialized:
                report.mapped.append(k)
    model.load_state_dict(final, strict=True)
    return report


def inspect_checkpoint(path_or_dir) -> Dict[str, Any]:
    """Layout, class count and metadata of a checkpoint without a model (what `convert` needs to build one)."""
    raw = read_checkpoint(path_or_dir)
    sd = raw.state_dict
    layout = detect_layout(sd)
    fmt = "videoats" if raw.meta.get("format") == FORMAT_TAG else layout
    if layout == "hf_timesformer":
        sd = from_hf_timesformer(sd)
    elif layout == "xvit_official":
        sd, _ = from_official_xvit(sd)
    num_classes = None
    for k in ("head.weight", "temporal_head.mlp.4.weight"):
        if k in sd:
            num_classes = int(sd[k].shape[0])
    return {"path": raw.path, "source_format": fmt, "family": FAMILY_OF_LAYOUT.get(layout, "other"),
            "num_classes": num_classes, "metadata": {k: raw.meta[k] for k in META_KEYS if k in raw.meta},
            "size_bytes": os.path.getsize(raw.path)}
