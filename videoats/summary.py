"""Numbers as the reports show them: the spread of a set of values, the top-k classes of a score vector, and
one number formatter. Evaluation, inference, training logs, `plot` and `videoats flops` all use these, so one figure
reads the same in all."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor


def stats(values) -> Optional[Dict[str, float]]:
    """{mean, min, max, count} of a sequence or tensor of numbers (float64); None when it is empty."""
    v = torch.as_tensor(values.tolist() if isinstance(values, Tensor) else list(values), dtype=torch.float64)
    if v.numel() == 0:
        return None
    return dict(mean=float(v.mean()), min=float(v.min()), max=float(v.max()), count=int(v.numel()))


def top_k(scores: Tensor, label_names: Sequence[str], k: int, probs: Optional[Tensor] = None) -> List[dict]:
    """The k best classes of one score vector, ties to the lower index (as `eval` ranks them):
    [{index, label, score}], where with `probs` the score is the probability and `aggregate` the score ranked."""
    k = max(1, min(int(k), scores.shape[-1]))
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    out = []
    for i in order.tolist():
        row = {"index": int(i), "label": label_names[i] if i < len(label_names) else str(int(i))}
        if probs is None:
            row["score"] = round(float(scores[i]), 6)
        else:
            row.update(score=round(float(probs[i]), 6), aggregate=round(float(scores[i]), 6))
        out.append(row)
    return out


def number_text(x, nd=2, digits=3, missing="n/a") -> str:
    """Big counts with separators, tiny-model counts with `digits` significant digits (0.0267, not 0.03)."""
    if not isinstance(x, (int, float)):
        return missing
    return f"{x:,.{nd}f}" if abs(x) >= 10 or x == 0 else f"{x:.{digits}g}"
