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
from torch import Tensor

from .. import zoo
from ..errors import VideoATSError
from ..models.registry import Family, families, family_of
from ..models.resize import resize_pos_1d, resize_time  # noqa: F401  (re-exported by videoats.checkpoint)
from .files import FORMAT_TAG, RawCheckpoint, read_checkpoint
from .layouts import TIMM_IGNORED, detect_layout, to_our_keys

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


def family_of_layout(layout: str) -> Optional[Family]:
    """The family whose weights a checkpoint layout holds (each family record names its layouts)."""
    return next((f for f in families() if layout in f.layouts), None)


def _title(family: Optional[Family]) -> str:
    return family.title if family is not None else "model"


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def _listing(keys, sd: Optional[Dict[str, Tensor]] = None) -> str:
    keys = list(keys)
    shown = [f"{k} {_shape(sd[k])}" if sd is not None and k in sd else k for k in keys[:SHOW]]
    more = f", ... ({len(keys)} in all)" if len(keys) > SHOW else ""
    return ", ".join(shown) + more


# ------------------------------------------------------------------------------- ImageNet init

def timm_to_video(sd: Dict[str, Tensor], model_sd: Dict[str, Tensor], family: Family, report: LoadReport):
    """ImageNet ViT weights -> a video model, as the TimeSformer authors initialise: temporal attention and
    its norm copied from the spatial ones, temporal_fc and time_embed zero (the video model starts as the
    image model applied per frame); a family's `image_init_kept` keys keep the model's own init (X-ViT: its
    temporal embedding and head), its `image_init_ignored` checkpoint keys are left out."""
    if "dist_token" in sd or any(k.startswith("head_dist.") for k in sd):
        raise VideoATSError("distilled DeiT weights (with dist_token) are not supported for video init; "
                            "use the non-distilled DeiT or ViT weights")
    out = {}
    for k, v in sd.items():
        if k.startswith(TIMM_IGNORED) or (family.image_init_ignored and k.startswith(family.image_init_ignored)):
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
        elif family.image_init_kept and k.startswith(family.image_init_kept):
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


def _to_our_layout(raw: RawCheckpoint, model: nn.Module, family: Optional[Family], report: LoadReport):
    """(state dict in our key names, whether it is an ImageNet init of a video model)."""
    layout = detect_layout(raw.state_dict)
    report.source_format = "videoats" if raw.meta.get("format") == FORMAT_TAG else layout
    sd, ignored = to_our_keys(raw.state_dict, layout)
    report.ignored.extend(ignored)
    src_family = family_of_layout(layout)
    if layout == "unknown" and family is not None:
        raise VideoATSError(f"{raw.path}: unrecognised checkpoint layout (keys like {_listing(sorted(sd))}); "
                            "expected an official TimeSformer/X-ViT, Hugging Face, timm or videoats checkpoint")
    # image ViT weights into a video model: the ImageNet init (a no-op for space_only TimeSformer)
    init = src_family is not None and not src_family.is_video and family is not None and family.is_video
    if family is not None and src_family is not family and not init and layout != "unknown":
        raise VideoATSError(
            f"{raw.path} holds {_title(src_family)} weights ({report.source_format}) but model "
            f"{getattr(model, 'model_name', type(model).__name__)} is a {_title(family)}: "
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
    family = family_of(model)
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
    family_heads = family.head_keys if family is not None else ()
    head_keys = [k for k in family_heads if k in model_sd]
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
        if k not in model_sd and allow_head_reset and k.startswith(tuple(h.rsplit(".", 1)[0] + "."
                                                                         for h in family_heads)):
            report.ignored.append(k)  # a head the (head-less) model does not have
            del sd[k]
    # position/time embeddings: resized when only their token count differs
    for k, (dim, fn, how) in (family.resize_rules if family is not None else {}).items():
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


def load_weights(model: nn.Module, path: str, *, allow_head_reset: bool = False, what: str = "checkpoint",
                 not_found: str = "", fix: str = "") -> LoadReport:
    """`load_checkpoint` for the jobs: a zoo name resolved, a missing file and anything the loader raises turned
    into one line (`what` names the setting, `not_found` / `fix` end the two messages)."""
    path = zoo.resolve(path)
    if not os.path.exists(path):
        raise VideoATSError(f"{what} not found: {path}{not_found}")
    try:
        return load_checkpoint(model, path, allow_head_reset=allow_head_reset)
    except VideoATSError:
        raise
    except (RuntimeError, KeyError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise VideoATSError(f"{what} {path} does not fit model {getattr(model, 'model_name', type(model).__name__)}: "
                            f"{first[:200]}{fix}")


def inspect_checkpoint(path_or_dir) -> Dict[str, Any]:
    """Layout, class count and metadata of a checkpoint without a model (what `convert` needs to build one)."""
    raw = read_checkpoint(path_or_dir)
    sd = raw.state_dict
    layout = detect_layout(sd)
    fmt = "videoats" if raw.meta.get("format") == FORMAT_TAG else layout
    sd, _ = to_our_keys(sd, layout)
    num_classes = None
    for f in families():
        if f.head_keys[0] in sd:
            num_classes = int(sd[f.head_keys[0]].shape[0])
    src_family = family_of_layout(layout)
    return {"path": raw.path, "source_format": fmt, "family": src_family.name if src_family else "other",
            "num_classes": num_classes, "metadata": {k: raw.meta[k] for k in META_KEYS if k in raw.meta},
            "size_bytes": os.path.getsize(raw.path)}
