"""A timm-style registry: every architecture is a named builder with its published defaults, and every
builder belongs to the family record (`Family`) its file declares (timm's `default_cfg` habit).

A family file (timesformer.py, xvit.py, vit.py) registers one `Family` (normalisation, head keys, resize
rules, checkpoint layouts, FLOPs cost spec) and its builders; generic code (checkpoint loading, FLOPs
counting, the commands) reads the record through `family_of(model)` / `family_of_name(name)` and imports no
model class.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch.nn as nn

from ..errors import VideoATSError
from .ats_patch import apply_ats
from .cost import CostSpec

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (token dim, function(tensor, new length) -> tensor, how) for one state-dict key
ResizeRule = Tuple[int, Callable, str]


@dataclass(frozen=True)
class ImageTransform:
    """An image model's published test transform (what its top-1 was measured with): resize the short side to
    `size / crop_fraction` and take the centre `size` x `size` crop, or with `crop_fraction` None resize the
    whole image to `size` x `size` (aspect not kept); `interpolation` bilinear | bicubic; then the family's
    mean / std."""

    size: int
    crop_fraction: Optional[float] = 0.875
    interpolation: str = "bicubic"

    @property
    def resize(self) -> int:
        """The short side before the crop (torchvision's and timm's int(size / fraction))."""
        return self.size if self.crop_fraction is None else int(self.size / self.crop_fraction)


@dataclass(frozen=True)
class Family:
    """What generic code needs to know about one backbone family, declared next to its blocks."""

    name: str  # e.g. "timesformer"
    title: str  # how messages name it, e.g. "TimeSformer"
    is_video: bool  # takes (B, 3, T, H, W); otherwise images (B, 3, H, W)
    matches: Callable[[nn.Module], bool]  # is this module one of the family (also when built by hand)?
    flops_spec: Callable[[nn.Module], CostSpec]  # model -> the cost terms of its forward pass
    # the cost terms of its ATS forward pass, where that differs from its own (a timm ViT's final norm sees
    # every token in timm's forward, the CLS alone in the ATS one); None: the same
    ats_flops_spec: Optional[Callable[[nn.Module], CostSpec]] = None
    mean: Tuple[float, float, float] = IMAGENET_MEAN  # input normalisation of the released weights
    std: Tuple[float, float, float] = IMAGENET_STD
    head_keys: Tuple[str, ...] = ("head.weight", "head.bias")  # the classifier (replaced on a new class count)
    resize_rules: Mapping[str, ResizeRule] = field(default_factory=dict)  # key -> rule
    layouts: Tuple[str, ...] = ()  # checkpoint layouts (`checkpoint.layouts.detect_layout`) holding its weights
    # initialising a video family from image weights: checkpoint key prefixes to ignore, and model keys
    # (prefixes) that keep the model's own initialisation
    image_init_ignored: Tuple[str, ...] = ()
    image_init_kept: Tuple[str, ...] = ()
    # image families: the published test transform for a model of a given input size
    image_transform: Optional[Callable[[int], ImageTransform]] = None


_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: Dict[str, Family] = {}  # by the module (family file) that declares it


def register_family(module: str, family: Family) -> Family:
    """Called once by a family file, `register_family(__name__, FAMILY)`: the builders it registers with
    `@register_model` belong to that family."""
    _FAMILIES[module] = family
    return family


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: the function's name is the model's name; its family is the one its file registered."""
    _BUILDERS[fn.__name__] = fn
    return fn


def list_models(pattern: Optional[str] = None) -> List[str]:
    names = sorted(_BUILDERS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def families() -> List[Family]:
    return list(_FAMILIES.values())


def family_of_name(name: str) -> Family:
    """The family record of a registered model name, without building it."""
    return _FAMILIES[_BUILDERS[_check_name(name)].__module__]


def family_of(model: nn.Module) -> Optional[Family]:
    """The family record of a model (built by `create_model`, by hand, or a timm ViT); None if unknown."""
    known = getattr(model, "family", None)
    if isinstance(known, Family):
        return known
    return next((f for f in _FAMILIES.values() if f.matches(model)), None)


def _check_name(name: str) -> str:
    if name not in _BUILDERS:
        close = [n for n in _BUILDERS if name.split("_")[0] in n]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise VideoATSError(f"unknown model {name!r}{hint} (see `videoats models` for the list)")
    return name


def create_model(name: str, num_classes: Optional[int] = None, ats=None, **overrides) -> nn.Module:
    """Build a registered model with fresh weights.

    `num_classes` replaces the published class count; `ats` (a dict or `ATSConfig`) turns on Adaptive
    Token Sampling; other keywords override the architecture (e.g. `num_frames=16`, `img_size=112`,
    `attention_type='joint_space_time'`, `depth=2`). Published weights are loaded one layer up, by
    `videoats.create_model(name, pretrained=True)` (`videoats.checkpoint.pretrained`), which reads the
    checkpoint layouts this layer's family records name.
    """
    builder = _BUILDERS[_check_name(name)]
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    try:
        model = builder(**overrides)
    except TypeError as e:
        raise VideoATSError(f"model {name!r}: {e}")
    model.model_name = name
    model.family = family_of_name(name)
    if ats is not None:
        apply_ats(model, ats)
    return model
