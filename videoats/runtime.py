"""The process a job runs in: rank and world size, device, the process group, collective helpers, seeding.

Launching: `torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; the group is gloo on CPU and nccl on GPU.
Evaluation, training and inference all read these, so they live below the jobs.
"""
from __future__ import annotations

import os
import random
from contextlib import nullcontext
from typing import Callable, ContextManager, List, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .errors import VideoATSError


def rank_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(cfg) -> torch.device:
    """DEVICE auto|cpu|cuda -> this process's device (under torchrun, the GPU of its LOCAL_RANK)."""
    if cfg.DEVICE == "cuda" and not torch.cuda.is_available():
        raise VideoATSError("DEVICE cuda asked for but no CUDA device is visible; use DEVICE cpu or auto")
    if cfg.DEVICE == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def inference_autocast(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    """The autocast an inference forward runs under (TEST.PRECISION): `auto` is bf16 on a CUDA device (fp16
    where bf16 is missing) and full precision on the CPU, where half types are slower; bf16 / fp16 / fp32
    force one. Dense and ATS models get the same, so their times and accuracies compare fairly."""
    if precision not in PRECISIONS:
        raise VideoATSError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return nullcontext
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return nullcontext
    return half_autocast(precision, device, "precision", off="fp32")


def half_autocast(name: str, device: torch.device, what: str, off: str) -> Callable[[], ContextManager]:
    """An autocast factory for `name` (bf16 | fp16) on `device`, refusing what the device cannot run; `what`
    names the setting and `off` its full-precision value in the error. Inference and training both use it."""
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise VideoATSError(f"{what} bf16: this GPU does not support bfloat16; use fp16")
    if name == "fp16" and device.type != "cuda":
        raise VideoATSError(f"{what} fp16 needs a CUDA device; on the CPU use bf16 or {off}")
    dtype = _HALF[name]
    return lambda: torch.autocast(device.type, dtype=dtype)


def compiled_for_inference(model: torch.nn.Module, enable: bool) -> torch.nn.Module:
    """`torch.compile(model)` when TEST.COMPILE is on (the module to call; accounting still reads `model`).
    ATS in its static mode reads nothing back from the device, so it must compile as one graph (fullgraph:
    a graph break is an error, not a silent slowdown); the trim mode breaks once per stage, by design."""
    if not enable:
        return model
    ats = getattr(model, "ats", None)
    static = ats is not None and ats.drop_tokens and ats.mode == "static"
    return torch.compile(model, fullgraph=static)


def init_from_env(cfg) -> bool:
    """Start the process group when torchrun launched several processes (nccl on GPU, gloo on CPU);
    True if this call started it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    device = resolve_device(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj) -> list:
    _, world = rank_world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: List[float], device: torch.device) -> List[float]:
    """Sum a few float64 scalars over processes (loss sums, correct counts)."""
    _, world = rank_world()
    if world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)  # also every CUDA device


def cleanup(started: bool) -> None:
    if started and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
