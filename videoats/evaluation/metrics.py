"""Video-level metrics from per-view logits: aggregation over views, top-k, mean per-class accuracy.

Kept free of models and data so that the numbers can be checked by hand (tests/test_eval.py) and so that a
distributed run, which only gathers per-view logits, computes exactly what a single process computes.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

AGGREGATIONS = ("sum_logits", "mean_softmax", "max_logits")
AGGREGATION_DOC = {
    "sum_logits": "sum of raw logits over the views (TimeSformer, X-ViT and ATS papers)",
    "mean_softmax": "mean of the softmax over the views (PySlowFast, pytorchvideo, mmaction2 'prob')",
    "max_logits": "element-wise max of the logits over the views",
}


def aggregate(view_logits: Tensor, method: str) -> Tensor:
    """(V, K) logits of one video's views -> (K,) video scores.

    Softmax is taken in float64 so that the mean over views does not depend on the view order.
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {method!r}; one of {', '.join(AGGREGATIONS)}")
    x = view_logits.double()
    if method == "sum_logits":
        return x.sum(dim=0)
    if method == "mean_softmax":
        return x.softmax(dim=-1).mean(dim=0)
    return x.max(dim=0).values


def probabilities(scores: Tensor, method: str, views: int) -> Tensor:
    """The aggregated scores of one video (or rows of videos) as probabilities in the same order.

    Softmax of the mean logit for sum_logits (the sum's order, without the sharpening a sum of V views
    would give), softmax of the max for max_logits, the mean softmax itself otherwise. `infer`, the Python
    API and eval's predictions.jsonl all report this as `score`, next to the ranked `aggregate`."""
    if method == "sum_logits":
        return (scores / max(1, int(views))).softmax(dim=-1)
    if method == "max_logits":
        return scores.softmax(dim=-1)
    return scores


def video_scores(view_logits: Tensor, video_index: Tensor, method: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Group views by video. Returns (video ids ascending, (N, K) scores, (N,) views per video).

    Views are summed in a fixed order (sorted by video then by their position in `view_logits`), so the
    caller should hand them over in a canonical order (e.g. sorted by (video, clip, crop)).
    """
    if view_logits.numel() == 0:
        k = view_logits.shape[-1] if view_logits.dim() == 2 else 0
        return (torch.empty(0, dtype=torch.long), torch.empty(0, k, dtype=torch.float64),
                torch.empty(0, dtype=torch.long))
    ids, counts = torch.unique(video_index, sorted=True, return_counts=True)
    scores = torch.stack([aggregate(view_logits[video_index == v], method) for v in ids.tolist()])
    return ids, scores, counts


def topk_correct(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """(N,) bool: the label is among the k highest scores. Ties go to the lower class index (stable)."""
    k = min(k, scores.shape[-1])
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    return (order == labels[:, None]).any(dim=1)


def mean_class_accuracy(pred: Tensor, labels: Tensor) -> Optional[float]:
    """Mean over the classes that occur in `labels` of the per-class top-1 accuracy (mmaction2's definition:
    classes with no test video are left out rather than counted as 0)."""
    if labels.numel() == 0:
        return None
    accs = [(pred[labels == c] == c).double().mean().item() for c in torch.unique(labels).tolist()]
    return float(sum(accs) / len(accs))


def classification_metrics(scores: Tensor, labels: Tensor) -> Dict[str, Optional[float]]:
    """top1/top5/mean_class_accuracy in percent over the rows with a label (label >= 0)."""
    keep = labels >= 0
    scores, labels = scores[keep], labels[keep]
    n = int(labels.numel())
    if n == 0:
        return {"top1": None, "top5": None, "mean_class_accuracy": None, "num": 0}
    pred = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, 0]
    mca = mean_class_accuracy(pred, labels)
    return {
        "top1": 100.0 * topk_correct(scores, labels, 1).double().mean().item(),
        "top5": 100.0 * topk_correct(scores, labels, 5).double().mean().item(),
        "mean_class_accuracy": None if mca is None else 100.0 * mca,
        "num": n,
    }


def evaluate_views(view_logits: Tensor, view_labels: Tensor, view_video: Tensor, method: str) -> dict:
    """Everything the results file reports about accuracy, from a table of views.

    Returns `video` (the multi-view metrics over videos), `clip` (single-view top-1/top-5 over all views:
    the number a training-time validation reports, not comparable with published multi-view numbers) and
    the per-video `ids`, `scores`, `labels`, `views` for the predictions file.
    """
    ids, scores, counts = video_scores(view_logits, view_video, method)
    labels = torch.stack([view_labels[view_video == v][0] for v in ids.tolist()]) if len(ids) else \
        torch.empty(0, dtype=torch.long)
    clip = classification_metrics(view_logits.double(), view_labels)
    return {
        "video": classification_metrics(scores, labels),
        "clip": {"top1": clip["top1"], "top5": clip["top5"], "num": clip["num"]},
        "ids": ids, "scores": scores, "labels": labels, "views": counts,
    }
