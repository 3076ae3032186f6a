"""Config -> model: the one builder every job uses (evaluation, training, inference)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import ats_from_cfg
from ..runtime import seed_everything
from .registry import create_model, family_of


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


def view_config_from_model(cfg, model: nn.Module, keys=()) -> None:
    """Without a config file, a model's test views follow the model: its frames and crop size, and the input
    normalisation of its family's released weights (X-ViT 0.5 / 0.5, DeiT ImageNet's, TimeSformer 0.45 / 0.225).
    Keys the user set on the command line (`keys`) stay as given. `infer` and `flops --input` both use this,
    so a file gets the same views from either."""
    if "DATA.NUM_FRAMES" not in keys and hasattr(model, "num_frames"):
        cfg.DATA.NUM_FRAMES = int(model.num_frames)
    if "DATA.TEST_CROP_SIZE" not in keys:
        size = getattr(model, "img_size", None)
        size = getattr(getattr(model, "patch_embed", None), "img_size", None) if size is None else size
        if size is not None:
            cfg.DATA.TEST_CROP_SIZE = int(size[0] if isinstance(size, (tuple, list)) else size)
    family = family_of(model)
    if family is not None and "DATA.MEAN" not in keys and "DATA.STD" not in keys:
        cfg.DATA.MEAN, cfg.DATA.STD = list(family.mean), list(family.std)
