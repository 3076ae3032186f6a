"""The process a job runs in: rank and world size, device, the process group, collective helpers, seeding.

Launching: `torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; the group is gloo on CPU and nccl on GPU.
Evaluation, training and inference all read these, so they live below the jobs.
"""
from __future__ import annotations

import os
import random
from typing import List, Tuple

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
