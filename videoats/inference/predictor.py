"""Turning command-line flags into a model ready for inference: config, checkpoint metadata, weights,
label names. `infer`, `visualize` and the demo share it, so one set of flags means one model everywhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

import yaml

from . import shipped
from .. import zoo
from ..checkpoint import inspect_checkpoint, load_weights
from ..config import CfgNode, apply_overrides, ats_from_cfg, config_from_yaml, get_cfg, load_config, validate
from ..data import ClipSettings
from ..data.annotations import read_labels_file
from ..data.clips import parse_views
from ..data.dataset import under_data_dir
from ..errors import VideoATSError
from ..models import apply_ats
from ..models.build import build_from_cfg, model_label, view_config_from_model
from ..runtime import compiled_for_inference, inference_autocast, resolve_device


@dataclass
class Predictor:
    """A model ready for inference with everything needed to read its answers."""

    model: nn.Module
    cfg: object  # the resolved CfgNode (MODEL/ATS/DATA/TEST as used)
    label_names: List[str]
    label_source: str  # labels_file | checkpoint | zoo | config | indices
    checkpoint: Optional[str]
    device: torch.device
    warnings: List[str] = field(default_factory=list)
    forward: Optional[nn.Module] = None  # what runs the views: `model`, or `model` compiled (TEST.COMPILE)
    # the user chose the clip count (--views, TEST.NUM_ENSEMBLE_VIEWS); else whole-video answers cover the video
    clips_given: bool = True

    def __post_init__(self):
        if self.forward is None:
            self.forward = compiled_for_inference(self.model, bool(self.cfg.TEST.COMPILE))

    def autocast(self):
        """The autocast context inference runs under (TEST.PRECISION; bf16 on CUDA by default)."""
        return inference_autocast(str(self.cfg.TEST.PRECISION), self.device)()

    @property
    def model_name(self) -> str:
        return getattr(self.model, "model_name", type(self.model).__name__)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def patch_size(self) -> int:
        """Pixels per token side, read off the patch-embedding convolution every backbone has."""
        return int(self.model.patch_embed.proj.kernel_size[0])

    @property
    def ats_enabled(self) -> bool:
        return getattr(self.model, "ats", None) is not None

    def settings(self):
        return ClipSettings.from_cfg(self.cfg)

    def view_shape(self) -> Tuple[int, int, int, int]:
        crop = int(self.cfg.DATA.TEST_CROP_SIZE)
        return (3, int(self.cfg.DATA.NUM_FRAMES), crop, crop)

    def describe(self) -> dict:
        """What was run, for the report: model, weights, ATS, label source, sampling."""
        d = self.cfg.DATA
        return {"model": self.model_name, "setting": model_label(self.model), "checkpoint": self.checkpoint,
                "ats": self.model.ats.to_dict() if self.ats_enabled else None, "num_classes": self.num_classes,
                "label_source": self.label_source,
                "num_frames": int(d.NUM_FRAMES), "sampling_rate": int(d.SAMPLING_RATE),
                "target_fps": float(d.TARGET_FPS), "crop_size": int(d.TEST_CROP_SIZE),
                "device": str(self.device), "precision": str(self.cfg.TEST.PRECISION),
                "compiled": bool(self.cfg.TEST.COMPILE)}


def default_ats_blocks(depth: int) -> List[int]:
    """Blocks 3..11 of a 12-block model, as in the ATS paper; the last three quarters of any depth."""
    return list(range(max(1, depth // 4), depth))


def _merge_lenient(node, values: dict, where: str, warnings: List[str], prefix: str = "") -> None:
    """Merge a checkpoint's stored config, keeping what this version knows (an old or newer videoats may
    have saved keys we do not have; that must not stop inference)."""
    for key, value in (values or {}).items():
        full = prefix + str(key)
        if key not in node:
            warnings.append(f"{where}: config key {full} unknown to this videoats, ignored")
            continue
        old = node[key]
        if isinstance(old, CfgNode):
            if isinstance(value, dict):
                _merge_lenient(old, value, where, warnings, full + ".")
            continue
        if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
            node[key] = list(value)
        elif isinstance(old, bool) or isinstance(value, bool):
            node[key] = value if isinstance(value, bool) and isinstance(old, bool) else old
        elif isinstance(old, float) and isinstance(value, (int, float)):
            node[key] = float(value)
        elif isinstance(value, type(old)):
            node[key] = value
        else:
            warnings.append(f"{where}: config key {full} = {value!r} has the wrong type, ignored")


def _config_labels(cfg) -> Optional[Tuple[List[str], str]]:
    if not cfg.DATA.LABELS_FILE:
        return None
    path = under_data_dir(os.path.expanduser(cfg.DATA.PATH_TO_DATA_DIR), cfg.DATA.LABELS_FILE)
    if not os.path.isfile(path):
        return None
    return read_labels_file(path), path


def stored_config(checkpoint: str, opts: Sequence[str] = ()) -> Tuple[CfgNode, str]:
    """(the config a videoats checkpoint was saved with, then `opts`; the checkpoint's file) for commands
    given no --config. `checkpoint` may be a name (`demo`, `zoo:NAME`); the shipped model gets its run-time
    ATS setting. VideoATSError when the file stores no config."""
    path = shipped.resolve(checkpoint) or zoo.resolve(os.path.expanduser(checkpoint))
    if not os.path.isfile(path):
        raise VideoATSError(f"checkpoint not found: {path} (give the path to a checkpoint file)")
    text = ((inspect_checkpoint(path) or {}).get("metadata") or {}).get("config")
    if not text:
        raise VideoATSError(f"checkpoint {checkpoint} stores no config: give --config FILE")
    cfg = config_from_yaml(text, f"the config stored in {checkpoint}")
    if shipped.is_shipped(path):
        apply_overrides(cfg, shipped.ats_overrides())
    apply_overrides(cfg, list(opts))
    validate(cfg)
    return cfg, path


def _opt_keys(opts: Sequence[str]) -> set:
    return set(list(opts)[0::2])


def load_predictor(config: Optional[str] = None, model_name: Optional[str] = None,
                   checkpoint: Optional[str] = None, ats: Optional[str] = None, opts: Sequence[str] = (),
                   labels_file: Optional[str] = None, views: Optional[str] = None) -> Predictor:
    """Build the model the flags describe and load its weights.

    Settings come from, last wins: the defaults, the config the checkpoint was saved with (when no
    `config` is given), the `config` file, `model_name`, then `opts`. Without a config the clip size follows
    the model (its frames and image size), so `--model NAME` alone runs. The class count is the one the
    weights have; label names come from `labels_file`, else the checkpoint, else the config's
    DATA.LABELS_FILE, else class indices. `ats`: None keeps the config's ATS.ENABLE, 'on'/'off' force it.
    `checkpoint` may name the shipped model (`demo`, `zoo:demo`), which runs at the ATS setting its
    provenance states (`shipped.ats_overrides`) unless `opts` say otherwise.
    """
    warnings: List[str] = []
    opts = list(opts or [])
    keys = _opt_keys(opts)
    cfg = load_config(config, opts)  # validates the file and the overrides early, with their own messages
    checkpoint = checkpoint or cfg.TEST.CHECKPOINT_FILE or None
    info = None
    if checkpoint:
        checkpoint = shipped.resolve(checkpoint) or zoo.resolve(os.path.expanduser(checkpoint))  # names -> files
        if not os.path.exists(checkpoint):
            raise VideoATSError(f"checkpoint not found: {checkpoint} (give the path to a checkpoint file)")
        info = inspect_checkpoint(checkpoint)
    meta = (info or {}).get("metadata", {}) or {}
    saved_cfg = meta.get("config")
    from_file = bool(config)
    if saved_cfg and not config:
        try:
            values = yaml.safe_load(saved_cfg) if isinstance(saved_cfg, str) else saved_cfg
        except yaml.YAMLError:
            values = None
            warnings.append(f"checkpoint {checkpoint}: its stored config is not valid YAML, ignored")
        if isinstance(values, dict):
            cfg = get_cfg()
            _merge_lenient(cfg, values, f"checkpoint {checkpoint}", warnings)
            if shipped.is_shipped(checkpoint):  # run at the ATS setting the README and the demo report
                apply_overrides(cfg, shipped.ats_overrides())
            apply_overrides(cfg, opts)
            from_file = True
    name = model_name or (cfg.MODEL.NAME if from_file or "MODEL.NAME" in keys else None) or meta.get("model_name")
    if not name:
        raise VideoATSError("no model: give --config FILE or --model NAME (see `videoats models`), or a "
                            "videoats checkpoint that names its model")
    cfg.MODEL.NAME = name
    if views:
        cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS = parse_views(views)

    labels = read_labels_file(labels_file) if labels_file else None
    if "MODEL.NUM_CLASSES" in keys:
        num_classes = int(cfg.MODEL.NUM_CLASSES)
    elif info and info.get("num_classes"):
        num_classes = int(info["num_classes"])
    elif from_file:
        num_classes = int(cfg.MODEL.NUM_CLASSES)
    elif labels:
        num_classes = len(labels)
    else:
        num_classes = None  # the registered default
    model = build_from_cfg(cfg, num_classes=num_classes, with_ats=False)
    if not getattr(model, "is_video", False):
        raise VideoATSError(f"{name} is an image model; infer, visualize and the demo take video models (see "
                            f"`videoats models`); count its GFLOPs with `videoats flops --model {name}`")
    num_classes = int(getattr(model, "num_classes", num_classes or 0))
    cfg.MODEL.NUM_CLASSES = num_classes
    if not from_file:  # clip geometry and normalisation from the model itself
        view_config_from_model(cfg, model, keys)
    elif getattr(model, "num_frames", cfg.DATA.NUM_FRAMES) != cfg.DATA.NUM_FRAMES:
        warnings.append(f"model {name} was built for {model.num_frames} frames but DATA.NUM_FRAMES is "
                        f"{cfg.DATA.NUM_FRAMES}; its time embedding is interpolated")
    size = getattr(model, "img_size", None)
    size = size[0] if isinstance(size, (tuple, list)) else size
    if from_file and size and int(size) != int(cfg.DATA.TEST_CROP_SIZE):
        warnings.append(f"model {name} was built for {size} px but DATA.TEST_CROP_SIZE is "
                        f"{cfg.DATA.TEST_CROP_SIZE}; its position embedding is interpolated")

    if ats not in (None, "on", "off"):
        raise VideoATSError(f"--ats {ats!r}: use on or off")
    if ats is not None:
        cfg.ATS.ENABLE = ats == "on"
    if cfg.ATS.ENABLE and not list(cfg.ATS.BLOCKS):
        cfg.ATS.BLOCKS = default_ats_blocks(int(getattr(model, "depth", 12)))
        warnings.append(f"ATS.BLOCKS not set: sampling after blocks {cfg.ATS.BLOCKS[0]}-{cfg.ATS.BLOCKS[-1]}")
    validate(cfg)
    apply_ats(model, ats_from_cfg(cfg))

    if checkpoint:
        load_weights(model, checkpoint, not_found=" (give the path to a checkpoint file)")
    else:
        warnings.append(f"no checkpoint given: {name} has random weights, so its predictions mean nothing "
                        "(give --checkpoint PATH)")

    source = "indices"
    if labels is not None:
        source = "labels_file"
        if len(labels) != num_classes:
            raise VideoATSError(f"labels file {labels_file} has {len(labels)} names but the model has "
                                f"{num_classes} classes; give one name per class")
    elif meta.get("label_names"):
        labels, source = [str(n) for n in meta["label_names"]], "checkpoint"
        if len(labels) != num_classes:
            warnings.append(f"checkpoint {checkpoint} has {len(labels)} label names for {num_classes} classes; "
                            "using class indices")
            labels, source = None, "indices"
    if labels is None and checkpoint and zoo.entry_for(checkpoint):
        found = zoo.label_names(zoo.entry_for(checkpoint))
        if found and len(found) == num_classes:
            labels, source = found, "zoo"
    if labels is None:
        found = _config_labels(cfg)
        if found and len(found[0]) == num_classes:
            labels, source = found[0], "config"
    if labels is None:
        labels, source = [str(i) for i in range(num_classes)], "indices"

    device = resolve_device(cfg)
    model.to(device).eval()
    return Predictor(model=model, cfg=cfg, label_names=labels, label_source=source,
                     checkpoint=os.path.abspath(checkpoint) if checkpoint else None, device=device,
                     warnings=warnings, clips_given=bool(views) or "TEST.NUM_ENSEMBLE_VIEWS" in keys)
