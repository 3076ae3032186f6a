"""YAML configs in the PySlowFast convention: `_BASE_` inheritance and `KEY VALUE` overrides.

Every key a config may set is declared here with its default, so that a typo is an error that names
the key instead of a setting that silently does nothing.
"""
from __future__ import annotations

import ast
import os
from typing import Iterable, Optional, Sequence

import yaml
from fvcore.common.config import CfgNode as _FvCfgNode

from .ats.core import MODES, SAMPLERS, SELECTIONS, VARIANTS
from .runtime import PRECISIONS
from .errors import VideoATSError


class CfgNode(_FvCfgNode):
    """fvcore's node (which resolves `_BASE_`) with errors a user can act on."""

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        if not os.path.isfile(cfg_filename):
            raise VideoATSError(f"config file not found: {cfg_filename} (give the path to a YAML file)")
        try:
            loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=allow_unsafe)
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            where = f" line {line + 1}" if line is not None else ""
            raise VideoATSError(f"config {cfg_filename}{where}: not valid YAML ({getattr(e, 'problem', e)})")
        except FileNotFoundError as e:
            raise VideoATSError(f"config {cfg_filename}: _BASE_ file not found: {e.filename}")
        except UnicodeDecodeError as e:  # a binary file (a checkpoint, a video) given as the config
            raise VideoATSError(f"config {cfg_filename}: not a text file (byte {e.start} is not UTF-8); give a "
                                "YAML config file")
        except OSError as e:
            raise VideoATSError(f"config {cfg_filename}: cannot be read ({e.strerror or e})")
        if not isinstance(loaded, dict):
            raise VideoATSError(f"config {cfg_filename}: expected a mapping of keys at the top level")
        _check_keys(self, loaded, cfg_filename)
        try:
            self.merge_from_other_cfg(type(self)(loaded))
        except (KeyError, ValueError) as e:
            raise VideoATSError(f"config {cfg_filename}: {_strip(e)}")


def _strip(e: Exception) -> str:
    return str(e.args[0]) if e.args else str(e)


def _check_keys(node: CfgNode, loaded: dict, where: str, prefix: str = "") -> None:
    for key, value in loaded.items():
        full = prefix + key
        if key not in node:
            raise VideoATSError(
                f"unknown config key {full!r} in {where}; known keys here: {', '.join(sorted(node.keys()))}"
            )
        if isinstance(node[key], CfgNode):
            if not isinstance(value, dict):
                raise VideoATSError(f"config key {full!r} in {where} is a section; give it a mapping")
            _check_keys(node[key], value, where, full + ".")


_C = CfgNode()
_C.OUTPUT_DIR = "outputs"  # where train and eval write (results, checkpoints, logs)
_C.SEED = 0  # seeds the model's initialisation, data order and augmentation
_C.DEVICE = "auto"  # where models run: auto (CUDA when there is one) | cpu | cuda
_C.LOG_PERIOD = 10  # training: log the loss every this many steps

_C.MODEL = CfgNode()
_C.MODEL.NAME = "timesformer_8x224"  # a registered architecture (`videoats models` lists them)
_C.MODEL.NUM_CLASSES = 600  # outputs of the classification head
# Overrides of the registered architecture; empty or null keeps the registered value (0 is a value: off).
_C.MODEL.ATTENTION_TYPE = ""  # TimeSformer: divided_space_time | joint_space_time | space_only
_C.MODEL.DROP_PATH_RATE = None  # stochastic depth of the last block (registered: TimeSformer 0.1, X-ViT 0)
_C.MODEL.DROPOUT_RATE = None  # dropout before the head (registered: X-ViT 0.5, TimeSformer 0)
_C.MODEL.ACT_CHECKPOINT = False  # training: recompute the blocks' activations in the backward pass (less memory)

_C.ATS = CfgNode()
_C.ATS.ENABLE = False  # build the model with ATS in ATS.BLOCKS
_C.ATS.BLOCKS = []  # 0-based block indices that sample tokens
_C.ATS.TOKENS = [0.5]  # one value for all stages or one per stage; a value <= 1 is a ratio of the current tokens
_C.ATS.VARIANT = "tube"  # what one draw covers: image | tube (locations) | frame (each frame) | joint (clip)
_C.ATS.DROP_TOKENS = True  # inference: really remove tokens (padded to the batch maximum)
_C.ATS.MIN_TOKENS = 8  # no stage keeps fewer tokens than this (CLS included), whatever the budget
_C.ATS.MODE = "trim"  # pruned layout: trim (pad to the batch's largest count) | static (widths from the budget)
_C.ATS.SAMPLER = "eager"  # eager | compiled (each stage's tensor work as torch.compile'd functions)
_C.ATS.SELECTION = "inverse_transform"  # inverse_transform (ATS) | top_k (fixed count) | random | evit | tome
_C.ATS.SEED = 0  # which tokens ATS.SELECTION random draws (the same tokens in every layout and on every device)

_C.DATA = CfgNode()
_C.DATA.PATH_TO_DATA_DIR = ""  # folder holding the annotation files (and the videos, unless DATA.PATH_PREFIX)
_C.DATA.PATH_PREFIX = ""  # videos are looked up under this folder (default: PATH_TO_DATA_DIR)
_C.DATA.TRAIN_ANNOTATION = "train.csv"  # training annotation file, under PATH_TO_DATA_DIR
_C.DATA.VAL_ANNOTATION = "val.csv"  # validation annotation file, under PATH_TO_DATA_DIR
_C.DATA.TEST_ANNOTATION = "test.csv"  # test annotation file, under PATH_TO_DATA_DIR
_C.DATA.ANNOTATION_FORMAT = "auto"  # annotation file format: auto (detected) | kinetics_csv | path_label | folders
_C.DATA.LABELS_FILE = ""  # one label name a line; default: the sorted label names of the annotations
_C.DATA.NUM_FRAMES = 8  # frames per clip
_C.DATA.SAMPLING_RATE = 32  # stride between a clip's frames, in frames at TARGET_FPS
_C.DATA.TARGET_FPS = 30  # SAMPLING_RATE counts frames at this rate: a clip spans the same time at any source rate
_C.DATA.TRAIN_JITTER_SCALES = [256, 320]  # training: the short side is resized to a random size in this range
_C.DATA.TRAIN_CROP_SIZE = 224  # training: square random crop size in pixels
_C.DATA.TEST_CROP_SIZE = 224  # test: short side resize and square crop size in pixels
_C.DATA.RANDOM_FLIP = True  # training: random horizontal flips
_C.DATA.MEAN = [0.45, 0.45, 0.45]  # per-channel mean subtracted from frames in [0, 1]
_C.DATA.STD = [0.225, 0.225, 0.225]  # per-channel standard deviation frames are divided by
_C.DATA.DECODER = "decord"  # decord | pyav (the other is the fallback)
_C.DATA.DECODE_SHORT_SIDE = 0  # >0: decode at this short side (decord), saves time on large videos
_C.DATA.DECODE_TIMEOUT = 60.0  # seconds before a stuck decode is given up and reported
_C.DATA.DECODE_THREADS = 1  # decoder threads per video (0: the decoder decides); loaders parallelise over workers
_C.DATA.NUM_WORKERS = 2  # data loader worker processes

_C.TEST = CfgNode()
_C.TEST.ENABLE = True  # PySlowFast compatibility; no command reads it
_C.TEST.CHECKPOINT_FILE = ""  # weights eval / infer load (a path or zoo:NAME); --checkpoint overrides it
_C.TEST.BATCH_SIZE = 8  # views per forward pass
_C.TEST.NUM_ENSEMBLE_VIEWS = 1  # temporal clips per video
_C.TEST.NUM_SPATIAL_CROPS = 3  # spatial crops per clip (views per video = clips x crops)
_C.TEST.CLIP_SAMPLING = "official"  # official (TimeSformer/X-ViT: clip k starts at (len-span)*k/n) | centered
_C.TEST.AGGREGATION = "sum_logits"  # how a video's views combine: sum_logits | mean_softmax | max_logits
_C.TEST.SPLIT = "test"  # which annotation file: train | val | test
_C.TEST.PRECISION = "auto"  # auto (bf16 autocast on CUDA, fp32 on the CPU) | bf16 | fp16 | fp32
_C.TEST.COMPILE = False  # torch.compile the model for eval / infer (ATS static mode: one graph)

_C.TRAIN = CfgNode()
_C.TRAIN.ENABLE = True  # False refuses `videoats train` (an eval-only config)
_C.TRAIN.CHECKPOINT_FILE = ""  # initial weights (any format load_checkpoint knows)
_C.TRAIN.BATCH_SIZE = 8  # clips per step, per process
_C.TRAIN.GLOBAL_BATCH_SIZE = 0  # >0: accumulate gradients up to this many clips per step over all processes
_C.TRAIN.EPOCHS = 15  # training epochs
_C.TRAIN.EVAL_PERIOD = 1  # validate every this many epochs (0: never)
_C.TRAIN.CHECKPOINT_PERIOD = 1  # save `last` every this many epochs (and always after the last)
_C.TRAIN.CHECKPOINT_STEPS = 0  # >0: also save `last` every this many optimizer steps inside an epoch
_C.TRAIN.AUTO_RESUME = True  # continue from OUTPUT_DIR's `last` checkpoint when there is one
_C.TRAIN.FINAL_TEST = True  # run the multi-view test on the test split after training

_C.SOLVER = CfgNode()
_C.SOLVER.OPTIMIZER = "adamw"  # the optimizer: adamw | sgd
_C.SOLVER.BASE_LR = 1e-4  # peak learning rate (after warm-up)
_C.SOLVER.MIN_LR = 1e-6  # learning rate the cosine schedule ends at
_C.SOLVER.WEIGHT_DECAY = 0.05  # the optimizer's weight decay
_C.SOLVER.MOMENTUM = 0.9  # SGD momentum
_C.SOLVER.WARMUP_EPOCHS = 1.0  # linear warm-up length in epochs (fractions allowed)
_C.SOLVER.LABEL_SMOOTHING = 0.1  # label smoothing of the cross-entropy loss
_C.SOLVER.CLIP_GRAD = 1.0  # max gradient norm, 0 to disable
_C.SOLVER.MIXED_PRECISION = "none"  # training autocast: none | bf16 | fp16 (fp16 on GPU only)


def get_cfg() -> CfgNode:
    """A fresh copy of the defaults."""
    return _C.clone()


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: CfgNode, opts: Sequence[str]) -> None:
    """Apply `KEY VALUE` pairs (PySlowFast style), e.g. `TEST.BATCH_SIZE 4 ATS.ENABLE True`."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise VideoATSError(f"overrides must be KEY VALUE pairs; {opts[-1]!r} has no value")
    for key, text in zip(opts[0::2], opts[1::2]):
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, CfgNode) or part not in node:
                raise VideoATSError(f"unknown config key {key!r} (no {'.'.join(parts[:i + 1])!r} in the config)")
            if i < len(parts) - 1:
                node = node[part]
        old, new = node[parts[-1]], _parse_value(text)
        if isinstance(old, CfgNode):
            raise VideoATSError(f"config key {key!r} is a section, not a value")
        if isinstance(old, bool) and isinstance(new, str) and new.lower() in ("true", "false"):
            new = new.lower() == "true"
        if isinstance(old, (list, tuple)) and not isinstance(new, (list, tuple)):
            new = [new]
        if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
            new = float(new)
        if old is not None and not isinstance(new, type(old)) and not (
            isinstance(old, (list, tuple)) and isinstance(new, (list, tuple))
        ):
            raise VideoATSError(
                f"config key {key!r} expects a {type(old).__name__} (like {old!r}), got {text!r}"
            )
        node[parts[-1]] = list(new) if isinstance(new, tuple) else new


def load_config(path: Optional[str] = None, opts: Iterable[str] = ()) -> CfgNode:
    """Defaults, then the YAML file (with its `_BASE_` chain), then the command-line overrides."""
    cfg = get_cfg()
    if path:
        cfg.merge_from_file(path)
    apply_overrides(cfg, list(opts))
    validate(cfg)
    return cfg


_CHOICES = {
    "ATS.VARIANT": VARIANTS,
    "ATS.MODE": MODES,
    "ATS.SAMPLER": SAMPLERS,
    "ATS.SELECTION": SELECTIONS,
    "DATA.ANNOTATION_FORMAT": ("auto", "kinetics_csv", "path_label", "folders"),
    "DATA.DECODER": ("decord", "pyav"),
    "TEST.CLIP_SAMPLING": ("official", "centered"),
    "TEST.AGGREGATION": ("sum_logits", "mean_softmax", "max_logits"),
    "TEST.SPLIT": ("train", "val", "test"),
    "TEST.PRECISION": PRECISIONS,
    "SOLVER.OPTIMIZER": ("adamw", "sgd"),
    "SOLVER.MIXED_PRECISION": ("none", "bf16", "fp16"),
    "DEVICE": ("auto", "cpu", "cuda"),
}


_INF = float("inf")
# every numeric key: (lowest, highest, what to say); checked up front so a bad value fails before any work
_RANGES = {
    "SEED": (0, 2 ** 63 - 1, "a non-negative integer"),
    "LOG_PERIOD": (1, _INF, "at least 1 (log every N steps)"),
    "MODEL.NUM_CLASSES": (1, _INF, "at least 1"),
    "MODEL.DROP_PATH_RATE": (0.0, 0.999, "in [0, 1) or null (the registered value)"),
    "MODEL.DROPOUT_RATE": (0.0, 0.999, "in [0, 1) or null (the registered value)"),
    "ATS.TOKENS": (1e-9, _INF, "positive: a ratio in (0, 1] or a token count"),
    "ATS.MIN_TOKENS": (1, _INF, "at least 1"),
    "ATS.SEED": (0, 2 ** 32 - 1, "an integer in [0, 2^32)"),
    "ATS.BLOCKS": (0, _INF, "block indices from 0"),
    "DATA.NUM_FRAMES": (1, _INF, "at least 1"),
    "DATA.SAMPLING_RATE": (1, _INF, "at least 1"),
    "DATA.TARGET_FPS": (1e-9, _INF, "positive"),
    "DATA.TRAIN_JITTER_SCALES": (1, _INF, "positive sizes"),
    "DATA.TRAIN_CROP_SIZE": (1, _INF, "at least 1"),
    "DATA.TEST_CROP_SIZE": (1, _INF, "at least 1"),
    "DATA.MEAN": (-_INF, _INF, "three numbers"),
    "DATA.STD": (1e-12, _INF, "three positive numbers"),
    "DATA.DECODE_SHORT_SIDE": (0, _INF, "0 (off) or a size in pixels"),
    "DATA.DECODE_TIMEOUT": (1e-9, _INF, "positive seconds"),
    "DATA.DECODE_THREADS": (0, _INF, "0 (the decoder decides) or a thread count"),
    "DATA.NUM_WORKERS": (0, _INF, "0 or more"),
    "TEST.BATCH_SIZE": (1, _INF, "at least 1"),
    "TEST.NUM_ENSEMBLE_VIEWS": (1, _INF, "at least 1"),
    "TEST.NUM_SPATIAL_CROPS": (1, _INF, "at least 1"),
    "TRAIN.BATCH_SIZE": (1, _INF, "at least 1"),
    "TRAIN.GLOBAL_BATCH_SIZE": (0, _INF, "0 (off) or a clip count"),
    "TRAIN.EPOCHS": (1, _INF, "at least 1"),
    "TRAIN.EVAL_PERIOD": (0, _INF, "0 (no validation) or a number of epochs"),
    "TRAIN.CHECKPOINT_PERIOD": (0, _INF, "0 (the last epoch only) or a number of epochs"),
    "TRAIN.CHECKPOINT_STEPS": (0, _INF, "0 (off) or a step count"),
    "SOLVER.BASE_LR": (0.0, _INF, "0 or more"),
    "SOLVER.MIN_LR": (0.0, _INF, "0 or more"),
    "SOLVER.WEIGHT_DECAY": (0.0, _INF, "0 or more"),
    "SOLVER.MOMENTUM": (0.0, 1.0, "in [0, 1]"),
    "SOLVER.WARMUP_EPOCHS": (0.0, _INF, "0 or more"),
    "SOLVER.LABEL_SMOOTHING": (0.0, 0.999, "in [0, 1)"),
    "SOLVER.CLIP_GRAD": (0.0, _INF, "0 (off) or a norm"),
}
_OPTIONAL = ("MODEL.DROP_PATH_RATE", "MODEL.DROPOUT_RATE")


def _value(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate(cfg: CfgNode) -> None:
    """Checks a value's range or choice, naming the key."""
    for key, choices in _CHOICES.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value not in choices:
            raise VideoATSError(f"config key {key} = {value!r} is not one of {', '.join(choices)}")
    for key, (low, high, what) in _RANGES.items():
        value = _value(cfg, key)
        if value is None and key in _OPTIONAL:
            continue
        numbers = value if isinstance(value, (list, tuple)) else [value]
        for v in numbers:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
                raise VideoATSError(f"config key {key} = {value!r} must be {what}")
    if len(cfg.DATA.MEAN) != 3 or len(cfg.DATA.STD) != 3:
        raise VideoATSError("config keys DATA.MEAN and DATA.STD need three values (one per RGB channel)")


def ats_from_cfg(cfg: CfgNode) -> Optional[dict]:
    """The `ats=` argument of `create_model` from the ATS section, or None when ATS is off."""
    if not cfg.ATS.ENABLE:
        return None
    tokens = list(cfg.ATS.TOKENS)
    return dict(
        blocks=list(cfg.ATS.BLOCKS),
        tokens=tokens[0] if len(tokens) == 1 else tokens,
        variant=cfg.ATS.VARIANT,
        drop_tokens=bool(cfg.ATS.DROP_TOKENS),
        min_tokens=int(cfg.ATS.MIN_TOKENS),
        mode=str(cfg.ATS.MODE),
        sampler=str(cfg.ATS.SAMPLER),
        selection=str(cfg.ATS.SELECTION),
        seed=int(cfg.ATS.SEED),
    )


def cfg_to_yaml(cfg: CfgNode) -> str:
    return cfg.dump()


def config_from_yaml(text: str, where: str = "the checkpoint's config") -> CfgNode:
    """A config stored as YAML text (in a checkpoint or results file), checked like a file."""
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise VideoATSError(f"{where} is not valid YAML ({getattr(e, 'problem', e)})")
    if not isinstance(loaded, dict):
        raise VideoATSError(f"{where}: expected a mapping of keys at the top level")
    cfg = get_cfg()
    _check_keys(cfg, loaded, where)
    cfg.merge_from_other_cfg(CfgNode(loaded))
    validate(cfg)
    return cfg
