"""The one piece of code that forwards views and reads what each forward pass cost and kept.

Every job that runs a model on views (evaluation, training's validation and step logs, inference, `videoats
flops`, `videoats figures`, the comparison) goes through here, so the logits, per-sample GFLOPs (from the
tokens each sample really kept), padded-batch GFLOPs and kept tokens that two jobs report for the same views
come from one code path and cannot drift apart:

- `account` reads a forward pass someone else ran (a training step, whose forward needs gradients);
- `Runner.run` forwards views in chunks (inference mode, device move, autocast, an optional compiled
  forward) and accounts every chunk; `Runner.collect` does it over a stream of batches into a `ViewTable`;
- `ViewTable` keeps a whole job's per-view rows in plain CPU tensors, so that ranks can gather them
  (`merge`), and `per_video_gflops` / `gflops_summary` turn them into the figures the reports print.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .ats import kept_tokens, token_masks
from .errors import VideoATSError
from .flops import CONVENTION, padded_gflops, sample_gflops
from .summary import stats


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


def concat(parts: Sequence[ViewOutputs]) -> ViewOutputs:
    """One ViewOutputs from several (chunks of one video, or of a run); padded GFLOPs weighted by views."""
    n = [p.gflops.numel() for p in parts]
    padded = sum(p.padded * c for p, c in zip(parts, n)) / max(1, sum(n))
    cat = lambda key: {b: torch.cat([getattr(p, key)[b] for p in parts]) for b in getattr(parts[0], key)}  # noqa
    logits = torch.cat([p.logits for p in parts]) if parts[0].logits is not None else None
    return ViewOutputs(logits, torch.cat([p.gflops for p in parts]), padded, cat("kept"), cat("masks"))


class Runner:
    """Forwards views through `model` and accounts every forward pass.

    `batch_size` views go through at a time (None: every `run` call in one pass), because the padded GFLOPs
    (and the memory) depend on how views are batched: a job states its batching here, once. `forward` is
    what runs the views (default `model`; a compiled `model`, see `runtime.compiled_for_inference`) under
    `autocast`; the accounting reads `model`, whose ATS records the forward pass wrote. `device` is where the
    views go (None: where they are).
    """

    def __init__(self, model: nn.Module, device=None, batch_size: Optional[int] = None,
                 forward: Optional[Callable[[Tensor], Tensor]] = None,
                 autocast: Callable[[], ContextManager] = nullcontext, keep_masks: bool = False):
        self.model, self.device, self.forward = model, device, model if forward is None else forward
        self.batch_size = None if batch_size is None else max(1, int(batch_size))
        self.autocast, self.keep_masks = autocast, keep_masks

    def run(self, views: Tensor) -> ViewOutputs:
        """Logits (float32, CPU) and `account`'s figures of `views`, forwarded in chunks of `batch_size`."""
        step = self.batch_size or max(1, views.shape[0])
        parts = []
        with torch.inference_mode():
            for i in range(0, views.shape[0], step):
                x = views[i:i + step]
                if self.device is not None:
                    x = x.to(self.device, non_blocking=True)
                with self.autocast():
                    logits = self.forward(x)
                logits = logits.float().cpu()
                out = account(self.model, x, self.keep_masks)
                out.logits = logits
                parts.append(out)
        return concat(parts)

    def collect(self, batches: Iterable[Tuple[Tensor, Optional[Tensor], Optional[Tensor]]],
                table: Optional["ViewTable"] = None) -> "ViewTable":
        """Run a stream of (views, keys, labels) batches into `table` (default a new one). With a `batch_size`
        the views are forwarded in chunks of exactly that size whatever the stream's batches (leftovers wait
        for the next batch), so memory stays bounded and the padded GFLOPs do not depend on the loader; the
        stream itself (a data loader's decoding) runs in inference mode too."""
        table = ViewTable() if table is None else table
        pending: List[Tuple[Tensor, Optional[Tensor], Optional[Tensor]]] = []
        size = self.batch_size

        def flush(final: bool):
            while pending and (final or sum(p[0].shape[0] for p in pending) >= size):
                cat = [None if pending[0][i] is None else torch.cat([p[i] for p in pending]) for i in range(3)]
                pending.clear()
                table.add(self.run(cat[0][:size]), *(None if c is None else c[:size] for c in cat[1:]))
                if cat[0].shape[0] > size:
                    pending.append(tuple(None if c is None else c[size:] for c in cat))

        with torch.inference_mode():
            for views, keys, labels in batches:
                if size is None:
                    table.add(self.run(views), keys, labels)
                else:
                    pending.append((views, keys, labels))
                    flush(final=False)
            flush(final=True)
        return table


class ViewTable:
    """A whole job's per-view rows: keys, labels, logits, GFLOPs, padded GFLOPs and kept tokens, in plain CPU
    tensors so that `all_gather_object` can ship `packed()` and `merge` can join the ranks' tables.

    Keys name each view, (V, k) long whose first column is the video (eval: video, clip, crop); a job whose
    views have no videos (synthetic batches) gives none, and its totals are per view x views.
    """

    def __init__(self):
        self.keys: List[Tensor] = []
        self.labels: List[Tensor] = []
        self.logits: List[Tensor] = []
        self.gflops: List[Tensor] = []
        self.padded: List[Tensor] = []
        self.kept: Dict[int, List[Tensor]] = {}

    def add(self, out: ViewOutputs, keys: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> None:
        """Append the views of `out` (from `Runner.run` or `account`), with their keys and labels if any."""
        n = out.gflops.numel()
        if keys is not None:
            keys = torch.as_tensor(keys, dtype=torch.long).cpu()
            if keys.shape[0] != n:
                raise VideoATSError(f"{keys.shape[0]} keys for {n} views")
            self.keys.append(keys.reshape(n, -1))
        if labels is not None:
            self.labels.append(torch.as_tensor(labels).long().cpu())
        if out.logits is not None:
            self.logits.append(out.logits.float().cpu())
        self.gflops.append(out.gflops.to(torch.float64).reshape(-1).cpu())
        self.padded.append(torch.full((n,), float(out.padded), dtype=torch.float64))
        for block, counts in out.kept.items():
            self.kept.setdefault(int(block), []).append(counts.reshape(-1).long().cpu())

    def packed(self) -> dict:
        """The rows as one dict of tensors (None where nothing was added), what `merge` and the reports read."""
        cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
        return {"keys": cat(self.keys), "labels": cat(self.labels), "logits": cat(self.logits),
                "gflops": cat(self.gflops), "padded": cat(self.padded),
                "kept": {b: torch.cat(v) for b, v in self.kept.items()}}


def merge(parts: List[dict]) -> dict:
    """The ranks' `packed()` tables as one, each key kept once and rows sorted by key: DistributedSampler
    repeats items to even out the ranks, and key order makes 1 and N processes give the same figures."""
    parts = [p for p in parts if p["gflops"] is not None and len(p["gflops"])]
    if not parts:
        return {"keys": torch.empty(0, 3, dtype=torch.long), "labels": torch.empty(0, dtype=torch.long),
                "logits": None, "gflops": None, "padded": None, "kept": {}}
    keys = torch.cat([p["keys"] for p in parts])
    first: Dict[tuple, int] = {}
    for i, k in enumerate(map(tuple, keys.tolist())):
        first.setdefault(k, i)
    idx = torch.tensor([first[k] for k in sorted(first)], dtype=torch.long)
    cat = lambda key: None if parts[0][key] is None else torch.cat([p[key] for p in parts])[idx]  # noqa: E731
    kept = {b: torch.cat([p["kept"][b] for p in parts])[idx] for b in parts[0]["kept"]}
    return {"keys": keys[idx], "labels": cat("labels"), "logits": cat("logits"), "gflops": cat("gflops"),
            "padded": cat("padded"), "kept": kept}


def per_video_gflops(table: dict) -> Dict[int, float]:
    """Each video's GFLOPs, the sum over its views in row order (what the papers' "GFLOPs" column means for
    ATS); {} when the rows name no videos."""
    if table.get("keys") is None or table.get("gflops") is None:
        return {}
    totals: Dict[int, float] = {}
    for v, g in zip(table["keys"][:, 0].tolist(), table["gflops"].tolist()):
        totals[v] = totals.get(v, 0.0) + g
    return totals


def _spread(values) -> Dict[str, float]:
    return stats(values) or dict(mean=float("nan"), min=float("nan"), max=float("nan"), count=0)


def gflops_summary(table: dict, views: Tuple[int, int] = (1, 1)) -> Dict[str, object]:
    """Per-view GFLOPs (mean/min/max/count), the total of `views` (clips, crops) per video and the padded
    figures of a `packed()` or merged table. The total is the sum over each video's views where the rows
    name videos, else the per-view figures x clips x crops."""
    g = table.get("gflops")
    g = torch.empty(0, dtype=torch.float64) if g is None else g
    per_view = _spread(g)
    n = views[0] * views[1]
    padded = float(table["padded"].mean()) if g.numel() else float("nan")
    videos = per_video_gflops(table)
    if videos:
        total, how = _spread(videos.values()), "sum over each video's views"
    else:
        total = {k: (v * n if k != "count" else v) for k, v in per_view.items()}
        how = "per view x clips x crops"
    return dict(convention=CONVENTION, views=f"{views[0]}x{views[1]}", per_view=per_view, total=total,
                total_is=how, padded_per_view=padded, padded_total=padded * n)
