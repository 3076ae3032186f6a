"""Config -> model: the one builder every job uses (evaluation, training, inference)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import ats_from_cfg
from ..runtime import seed_everything
from .registry import create_model


FROM_CFG = object()  # num_classes: MODEL.NUM_CLASSES


def build_from_cfg(cfg, *, for_training: bool = False, num_classes: Optional[int] = FROM_CFG,
                   with_ats: bool = True) -> nn.Module:
    """The model the config describes (MODEL + ATS sections), initialised from cfg.SEED so that every process
    of a distributed run (and a rerun) starts from the same weights when no checkpoint is given.

    For training the process is seeded (every later draw of the run follows from SEED) and the drop rates
    apply; otherwise the caller's random state is left as it was. `num_classes` overrides MODEL.NUM_CLASSES
    (None: the registered default); `with_ats=False` builds the dense model (ATS applied later).
    """
    kw = {}
    if cfg.MODEL.ATTENTION_TYPE:
        kw["attention_type"] = cfg.MODEL.ATTENTION_TYPE
    if for_training:
        if cfg.MODEL.DROP_PATH_RATE is not None:
            kw["drop_path_rate"] = float(cfg.MODEL.DROP_PATH_RATE)
        if cfg.MODEL.DROPOUT_RATE is not None:
            kw["dropout_rate"] = float(cfg.MODEL.DROPOUT_RATE)
    classes = int(cfg.MODEL.NUM_CLASSES) if num_classes is FROM_CFG else num_classes
    ats = ats_from_cfg(cfg) if with_ats else None
    if for_training:
        seed_everything(int(cfg.SEED))
        return create_model(cfg.MODEL.NAME, num_classes=classes, ats=ats, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.SEED))
        return create_model(cfg.MODEL.NAME, num_classes=classes, ats=ats, **kw)


def model_label(model: nn.Module) -> str:
    """`name` or `name + ATS variant blocks a-b tokens t`: how plots and tables name a setting."""
    name = getattr(model, "model_name", type(model).__name__)
    ats = getattr(model, "ats", None)
    return name if ats is None else f"{name} + {ats.label()}"
