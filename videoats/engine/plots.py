"""PNG figures: kept tokens per ATS stage (the ATS paper's "Adaptive Sampling" histograms) and GFLOPs vs
top-1 over several results files. Agg backend, so they work on headless machines and in workers."""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

from ..errors import VideoATSError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    from ..atomic import atomic_write

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    try:
        return atomic_write(path, write)
    finally:
        _pyplot().close(fig)


def plot_kept_tokens(kept: Dict[int, Sequence], path: str, title: str = "", of: Optional[int] = None) -> str:
    """One panel per ATS stage: how many tokens each evaluated view kept there.

    A spread-out histogram is the point of ATS (easy clips keep fewer tokens); a single bar means the budget,
    not the content, decides.
    """
    plt = _pyplot()
    blocks = sorted(int(b) for b in kept)
    if not blocks:
        raise VideoATSError("no kept-token counts to plot (the model has no ATS stage)")
    cols = min(4, len(blocks))
    rows = math.ceil(len(blocks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for i, b in enumerate(blocks):
        ax = axes[i // cols][i % cols]
        values = [float(v) for v in (kept[b].tolist() if hasattr(kept[b], "tolist") else kept[b])]
        lo, hi = min(values), max(values)
        bins = max(1, min(30, int(hi - lo) + 1))
        ax.hist(values, bins=bins, range=(lo - 0.5, hi + 0.5), color=cmap(i / max(1, len(blocks) - 1)),
                edgecolor="black", linewidth=0.4)
        pad = max(3.0, 0.1 * (hi - lo))  # a single bar stays a bar, not a filled panel
        ax.set_xlim(lo - pad, hi + pad)
        mean = sum(values) / len(values)
        ax.axvline(mean, color="crimson", linestyle="--", linewidth=1)
        ax.set_title(f"stage {b}: mean {mean:.0f}" + (f" of {of}" if of else ""), fontsize=9)
        ax.set_xlabel("kept tokens", fontsize=8)
        ax.set_ylabel("views", fontsize=8)
        ax.tick_params(labelsize=7)
    for j in range(len(blocks), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"Adaptive sampling: kept tokens per stage{' - ' + title if title else ''}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def load_results(paths: Sequence[str]) -> List[dict]:
    """Read eval results files, refusing anything else with a message that names the file."""
    docs = []
    for path in paths:
        if not os.path.isfile(path):
            raise VideoATSError(f"results file not found: {path} (give results.json files written by `videoats eval`)")
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VideoATSError(f"{path} is not JSON ({e}); give results.json files written by `videoats eval`")
        if not isinstance(doc, dict) or "metrics" not in doc or "gflops" not in doc:
            raise VideoATSError(f"{path} is not a `videoats eval` results file (no metrics/gflops)")
        doc["_path"] = path
        docs.append(doc)
    return docs


def plot_gflops_vs_top1(docs: Sequence[dict], path: str, title: str = "") -> dict:
    """GFLOPs over all views (x, as the paper tables) against video top-1 (y), one labelled point per file.

    Results evaluated with different views are still plotted but flagged in the legend, since their totals
    are not comparable.
    """
    plt = _pyplot()
    points, skipped = [], []
    for d in docs:
        g, top1 = d["gflops"].get("total"), d["metrics"]["video"].get("top1")
        if g is None or top1 is None:
            skipped.append(d["_path"])
            continue
        label = d.get("model", {}).get("label") or os.path.basename(os.path.dirname(d["_path"]))
        points.append({"label": f"{label} [{d['protocol']['views']}]", "gflops": float(g), "top1": float(top1),
                       "ats": d.get("model", {}).get("ats") is not None, "path": d["_path"]})
    if not points:
        raise VideoATSError("none of the results files has both GFLOPs and top-1 "
                            f"({', '.join(skipped)}); re-run `videoats eval` with the FLOPs counter available")
    fig, ax = plt.subplots(figsize=(7, 4.8))
    cmap = plt.get_cmap("tab10")
    for i, p in enumerate(points):
        ax.scatter(p["gflops"], p["top1"], s=60, marker="o" if not p["ats"] else "^", color=cmap(i % 10),
                   edgecolor="black", linewidth=0.5, label=p["label"], zorder=3)
        ax.annotate(p["label"], (p["gflops"], p["top1"]), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.set_xlabel("GFLOPs, total over views (ATS: mean per-sample count)")
    ax.set_ylabel("video top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Accuracy vs compute (o dense, ^ ATS)", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path)
    return {"output": os.path.abspath(path), "points": points, "skipped": skipped}
