"""Reading any checkpoint file into a flat state dict, and writing videoats checkpoints atomically.

Reading never unpickles arbitrary objects unless the file is an official TimeSformer `.pyth` that needs it:
everything else goes through `torch.load(weights_only=True)` or safetensors, so a checkpoint downloaded
from anywhere cannot run code.
"""
from __future__ import annotations

import json
import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .. import zoo
from ..atomic import atomic_write
from ..errors import VideoATSError

FORMAT_TAG = "videoats"
FORMAT_VERSION = 1
# where a directory may keep its weights, best first (Hugging Face names, then ours)
DIR_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "checkpoint.safetensors", "checkpoint.pt")
# top-level keys that wrap a state dict: PySlowFast/TimeSformer/X-ViT, DeiT/timm, HF converter, DDP, EMA
CONTAINER_KEYS = ("model_state", "state_dict", "model", "module", "state_dict_ema")
STRIP_PREFIXES = ("module.", "model.")


@dataclass
class RawCheckpoint:
    """A state dict as found in a file, plus where it came from and the metadata stored beside it."""

    path: str
    state_dict: Dict[str, Tensor]
    meta: Dict[str, Any] = field(default_factory=dict)  # videoats metadata, HF config, epoch, ...
    container: Optional[str] = None  # the top-level key that held the weights
    stripped: List[str] = field(default_factory=list)  # key prefixes removed
    file_format: str = "torch"  # torch | safetensors
    unsafe_pickle: bool = False


def resolve_path(path_or_dir) -> str:
    """The weights file behind a file, a folder (Hugging Face layout) or `zoo:NAME` (downloaded once into
    the cache, see `videoats.zoo`): every reader of a checkpoint comes through here, so every command that
    takes `--checkpoint` accepts a zoo name."""
    path = zoo.resolve(os.fspath(path_or_dir))
    if not os.path.exists(path):
        raise VideoATSError(f"checkpoint not found: {path} (give a checkpoint file, a Hugging Face model folder "
                            "or zoo:NAME, see `videoats models`)")
    if os.path.isdir(path):
        for name in DIR_WEIGHT_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        found = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin", ".pyth", ".pth", ".pt")))
        if len(found) == 1:
            return os.path.join(path, found[0])
        hint = f"; it has several candidates ({', '.join(found[:5])}): name one" if found else ""
        raise VideoATSError(f"no weights in folder {path}: expected {' or '.join(DIR_WEIGHT_FILES[:2])}{hint}")
    return path


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _hf_config(path: str) -> Dict[str, Any]:
    """Label names from a Hugging Face `config.json` next to the weights, when there is one."""
    cfg_path = os.path.join(os.path.dirname(path), "config.json")
    if not os.path.isfile(cfg_path):
        return {}
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return {}
    meta: Dict[str, Any] = {"hf_config": {k: cfg[k] for k in ("num_frames", "image_size", "model_type") if k in cfg}}
    id2label = cfg.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            labels = [id2label[k] for k in sorted(id2label, key=int)]
            if not all(lab.startswith("LABEL_") for lab in labels):
                meta["label_names"] = labels
        except (ValueError, AttributeError):
            pass
    return meta


def _read_safetensors(path: str) -> RawCheckpoint:
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise VideoATSError(f"cannot read safetensors file {path}: {e}")
    meta: Dict[str, Any] = {}
    if header.get("format") == FORMAT_TAG:
        meta = {"format": FORMAT_TAG}
        for key, value in header.items():
            if key == "format":
                continue
            try:
                meta[key] = json.loads(value)
            except ValueError:
                meta[key] = value  # e.g. YAML config text stored as a plain string
    else:
        meta.update(_hf_config(path))
    return RawCheckpoint(path, sd, meta, file_format="safetensors")


def _weights_only_problem(err: Exception) -> str:
    text = str(err)
    for line in text.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def _torch_load(path: str) -> tuple:
    """(object, unsafe_pickle). Only official `.pyth` files may fall back to full unpickling."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except Exception as e:  # noqa: BLE001 - any failure here means "not a readable checkpoint"
        first = e
    if path.endswith(".pyth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise VideoATSError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        warnings.warn(f"{path}: loaded with full unpickling (it holds Python objects besides tensors); "
                      "only do this with files from a source you trust")
        return obj, True
    raise VideoATSError(f"cannot read checkpoint {path}: it is not a plain-tensor PyTorch file "
                        f"({_weights_only_problem(first)[:200]}); re-save its state dict or convert it")


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _unwrap(path: str, obj) -> RawCheckpoint:
    if not isinstance(obj, Mapping):
        raise VideoATSError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict; save "
                            "model.state_dict() (or a dict with 'model_state' / 'state_dict') instead")
    meta: Dict[str, Any] = {}
    container = None
    if obj.get("format") == FORMAT_TAG:
        meta = {k: v for k, v in obj.items() if k not in ("state_dict",)}
        sd = obj.get("state_dict")
        container = "state_dict"
    elif _is_tensor_dict(obj):
        sd = obj
    else:
        sd = None
        for key in CONTAINER_KEYS:
            if _is_tensor_dict(obj.get(key)):
                sd, container = obj[key], key
                break
        for key in ("epoch", "cfg"):
            if key in obj and isinstance(obj[key], (int, str)):
                meta[key] = obj[key]
    if not _is_tensor_dict(sd):
        keys = ", ".join(map(str, list(obj)[:6]))
        raise VideoATSError(f"checkpoint {path} has no state dict of tensors (top-level keys: {keys}); "
                            f"expected one of {', '.join(CONTAINER_KEYS)} or a bare state dict")
    sd, stripped = strip_prefixes(dict(sd))
    if meta.get("format") != FORMAT_TAG:
        meta.update(_hf_config(path))
    return RawCheckpoint(path, sd, meta, container=container, stripped=stripped)


def strip_prefixes(sd: Dict[str, Tensor]):
    """Remove `module.` (DDP) and `model.` (the TimeSformer wrapper) when every key has them."""
    stripped = []
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                stripped.append(prefix)
                changed = True
    return sd, stripped


def read_checkpoint(path_or_dir) -> RawCheckpoint:
    path = resolve_path(path_or_dir)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise VideoATSError(f"cannot read checkpoint {path}: {e.strerror}")
    if size == 0:
        raise VideoATSError(f"checkpoint {path} is empty (0 bytes); the download or save was cut short")
    if _is_safetensors(head, size):
        return _read_safetensors(path)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise VideoATSError(f"{path} is not a checkpoint: neither a PyTorch file nor safetensors "
                            f"(it starts with {head[:8]!r})")
    obj, unsafe = _torch_load(path)
    raw = _unwrap(path, obj)
    raw.unsafe_pickle = unsafe
    return raw


# ---------------------------------------------------------------------------------------------- writing

def save_checkpoint(path, model, config=None, label_names=None, extra: Optional[Dict[str, Any]] = None) -> str:
    """Save `model` as a videoats checkpoint; `.safetensors` keeps weights + JSON metadata, anything else
    a torch dict that can also carry training state in `extra` (optimizer, scheduler, epoch...)."""
    path = os.fspath(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    num_classes = getattr(model, "num_classes", None)
    label_names = list(label_names) if label_names is not None else None
    if label_names is not None and num_classes and len(label_names) != num_classes:
        raise VideoATSError(f"{len(label_names)} label names for a model with {num_classes} classes; "
                            "give one name per class")
    config_text = config if config is None or isinstance(config, str) else config.dump()
    meta = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION,
            "model_name": getattr(model, "model_name", type(model).__name__), "num_classes": num_classes,
            "label_names": label_names, "config": config_text}
    if path.endswith(".safetensors"):
        header = {"format": FORMAT_TAG}
        for key, value in {**meta, **(extra or {})}.items():
            if key == "format":
                continue
            try:
                header[key] = json.dumps(value)
            except TypeError:
                raise VideoATSError(f"cannot store {key!r} in safetensors metadata (not JSON); "
                                    f"save to a .pt file to keep training state: {path}")
        # safetensors refuses tensors that share memory; clone any such aliases
        seen, tensors = set(), {}
        for k, v in state.items():
            ptr = v.untyped_storage().data_ptr() if v.numel() else None
            tensors[k] = v.clone() if ptr in seen else v
            if ptr is not None:
                seen.add(ptr)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    else:
        obj = {**meta, **(extra or {}), "state_dict": state}
        atomic_write(path, lambda tmp: torch.save(obj, tmp))
    return path
