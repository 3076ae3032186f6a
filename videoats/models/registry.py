"""A timm-style registry: every architecture is a named builder with its published defaults."""
from __future__ import annotations

import fnmatch
from typing import Callable, Dict, List, Optional, Union

import torch.nn as nn

from .. import zoo
from ..checkpoint import load_checkpoint
from ..errors import VideoATSError

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: the function's name is the model's name."""
    _BUILDERS[fn.__name__] = fn
    return fn


def list_models(pattern: Optional[str] = None) -> List[str]:
    names = sorted(_BUILDERS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def create_model(name: str, num_classes: Optional[int] = None, ats=None, pretrained: Union[bool, str] = False,
                 **overrides) -> nn.Module:
    """Build a registered model.

    `num_classes` replaces the published class count; `ats` (a dict or `ATSConfig`) turns on Adaptive
    Token Sampling; other keywords override the architecture (e.g. `num_frames=16`, `img_size=112`,
    `attention_type='joint_space_time'`, `depth=2`). `pretrained=True` loads the model's published weights
    from the zoo (downloaded once, `videoats models` lists them), a zoo name other weights; with another
    `num_classes` the head starts new, as when fine-tuning.
    """
    if name not in _BUILDERS:
        close = [n for n in _BUILDERS if name.split("_")[0] in n]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise VideoATSError(f"unknown model {name!r}{hint} (see `videoats models` for the list)")
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    try:
        model = _BUILDERS[name](**overrides)
    except TypeError as e:
        raise VideoATSError(f"model {name!r}: {e}")
    model.model_name = name
    if pretrained:
        weights = zoo.default_for(name) if pretrained is True else str(pretrained)
        load_checkpoint(model, zoo.PREFIX + weights, allow_head_reset=num_classes is not None)
    if ats is not None:
        from ..ats import apply_ats

        apply_ats(model, ats)
    return model
