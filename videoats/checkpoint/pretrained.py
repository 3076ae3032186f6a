"""`create_model` with published weights: the model layer builds, this layer (which reads checkpoints and
the zoo) loads. Kept here, above both, so that the models never import the checkpoint code that reads them.
"""
from __future__ import annotations

from typing import Optional, Union

import torch.nn as nn

from .. import zoo
from ..models import apply_ats, create_model as build_model
from .loading import load_checkpoint


def create_model(name: str, num_classes: Optional[int] = None, ats=None, pretrained: Union[bool, str] = False,
                 **overrides) -> nn.Module:
    """Build a registered model (`videoats.models.create_model`: `num_classes`, `ats` and architecture
    overrides as there) and, with `pretrained=True`, load its published weights from the zoo (downloaded
    once; `videoats models` lists them), or with a zoo name those weights. With another `num_classes` the
    head starts new, as when fine-tuning. ATS is turned on after loading."""
    model = build_model(name, num_classes=num_classes, **overrides)
    if pretrained:
        weights = zoo.default_for(name) if pretrained is True else str(pretrained)
        load_checkpoint(model, zoo.PREFIX + weights, allow_head_reset=num_classes is not None)
    if ats is not None:
        apply_ats(model, ats)
    return model
