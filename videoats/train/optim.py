"""Optimiser, learning-rate schedule, mixed precision and activation checkpointing for `train`.

The schedule is a pure function of the optimizer step (`lr_at`), so a resumed run gets exactly the rates an
uninterrupted one would, whatever the epoch length: nothing but the step count needs restoring.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, List

import torch
from torch import nn

from ..errors import VideoATSError
from ..runtime import half_autocast

# parameters that are not weights of a linear map: decaying them only hurts (ViT/DeiT/TimeSformer practice)
NO_DECAY_NAMES = ("pos_embed", "cls_token", "time_embed", "temp_embed", "dist_token")


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Two groups: weights with decay; biases, norms and embeddings without."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, solver) -> torch.optim.Optimizer:
    groups = param_groups(model, solver.WEIGHT_DECAY)
    lr = float(solver.BASE_LR)
    if solver.OPTIMIZER == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if solver.OPTIMIZER == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(solver.MOMENTUM))
    raise VideoATSError(f"SOLVER.OPTIMIZER {solver.OPTIMIZER!r} is not one of adamw, sgd")


def lr_at(step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Rate for optimizer step `step` (0-based): linear warm-up to `base_lr` over `warmup_steps` steps
    (step s gets base * (s + 1) / warmup), then a half cosine from `base_lr` down to `min_lr` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Per-step schedule holder: sets every group's lr before each optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, min_lr: float, warmup_steps: int,
                 total_steps: int):
        self.optimizer = optimizer
        self.base_lr, self.min_lr = float(base_lr), float(min_lr)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.step_count = 0

    def lr(self, step: int) -> float:
        return lr_at(step, self.base_lr, self.min_lr, self.warmup_steps, self.total_steps)

    def apply(self, step: int) -> float:
        """Set the rate of optimizer step `step`; returns it."""
        self.step_count = int(step)
        value = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = value
        return value

    def state_dict(self) -> Dict[str, float]:
        return {"step": self.step_count, "base_lr": self.base_lr, "min_lr": self.min_lr,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        # only the position is restored: the horizon comes from the current config (a run may be extended)
        self.step_count = int(state.get("step", 0))


# ---------------------------------------------------------------------------------------------- precision


def precision_setup(mode: str, device: torch.device):
    """(autocast context factory, GradScaler or None). fp16 without a scaler underflows, and CPU autocast
    has no fp16 scaler worth the name, hence the refusal."""
    if mode == "none":
        return contextlib.nullcontext, None
    if mode in ("bf16", "fp16"):
        autocast = half_autocast(mode, device, "SOLVER.MIXED_PRECISION", off="none")
        return autocast, torch.amp.GradScaler("cuda") if mode == "fp16" else None
    raise VideoATSError(f"SOLVER.MIXED_PRECISION {mode!r} is not one of none, bf16, fp16")
