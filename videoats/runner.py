"""The one place that reads what a forward pass cost and kept: per-sample GFLOPs (from the tokens each sample
really kept), the padded batch's GFLOPs, kept tokens per ATS stage and, when asked, the kept-token masks.
Evaluation, inference, training (validation and its step logs) and `videoats flops` all go through here, so
the figures an `eval`, an `infer` and a `flops` run report for the same views come from one code path.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, Optional

import torch
from torch import Tensor, nn

from .ats import kept_tokens, token_masks
from .flops import padded_gflops, sample_gflops


@dataclass
class ViewOutputs:
    logits: Optional[Tensor]  # (V, K) float32 on the CPU (None from `account`, which runs no forward pass)
    gflops: Tensor  # (V,) float64: each view's own GFLOPs
    padded: float  # GFLOPs per view the padded batches computed
    kept: Dict[int, Tensor]  # block -> (V,) long, kept patch tokens; empty for a dense model
    masks: Dict[int, Tensor] = field(default_factory=dict)  # block -> (V, T, L0) bool, when asked for


def account(model: nn.Module, inputs: Tensor, keep_masks: bool = False) -> ViewOutputs:
    """GFLOPs and kept tokens of the forward pass `model` just ran on `inputs`, on the CPU."""
    kept = {int(b): k.reshape(-1).long().cpu() for b, k in kept_tokens(model).items()}
    masks = {int(b): m.cpu() for b, m in token_masks(model).items()} if keep_masks else {}
    return ViewOutputs(None, sample_gflops(model, inputs).cpu(), padded_gflops(model, inputs), kept, masks)


def run_views(model: nn.Module, views: Tensor, batch_size: int, device, keep_masks: bool = False,
              forward: Optional[Callable[[Tensor], Tensor]] = None,
              autocast: Callable[[], ContextManager] = nullcontext) -> ViewOutputs:
    """Forward `views` in chunks of `batch_size` (inference mode) and collect logits and `account`'s figures.
    `forward` is what runs the views (default `model`; a compiled `model`, see `runtime.compiled_for_inference`)
    under `autocast`; the accounting reads `model`, whose ATS records the forward pass wrote."""
    forward = model if forward is None else forward
    parts = []
    with torch.inference_mode():
        for i in range(0, views.shape[0], max(1, int(batch_size))):
            x = views[i:i + max(1, int(batch_size))].to(device, non_blocking=True)
            with autocast():
                logits = forward(x)
            logits = logits.float().cpu()
            out = account(model, x, keep_masks)
            out.logits = logits
            parts.append(out)
    return concat(parts)


def concat(parts) -> ViewOutputs:
    """One ViewOutputs from several (chunks of one video, or of a run)."""
    n = [p.gflops.numel() for p in parts]
    padded = sum(p.padded * c for p, c in zip(parts, n)) / max(1, sum(n))
    cat = lambda key: {b: torch.cat([getattr(p, key)[b] for p in parts]) for b in getattr(parts[0], key)}  # noqa
    logits = torch.cat([p.logits for p in parts]) if parts[0].logits is not None else None
    return ViewOutputs(logits, torch.cat([p.gflops for p in parts]), padded, cat("kept"), cat("masks"))
