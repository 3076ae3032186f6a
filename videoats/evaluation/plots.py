"""PNG figures: kept tokens per ATS stage (the ATS paper's "Adaptive Sampling" histograms) and GFLOPs vs
top-1 over several results files. Agg backend, so they work on headless machines and in workers."""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

from ..atomic import atomic_write
from ..errors import VideoATSError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
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


def _short_paths(paths: Sequence[str]) -> Dict[str, str]:
    """Each path by its shortest tail of components that no other (different) path shares: `best.pt`, or
    `run_a/checkpoints/best.pt` when another run also has a `best.pt`."""
    parts = {p: os.path.normpath(p).split(os.sep) for p in set(paths)}
    out = {}
    for p, comps in parts.items():
        for k in range(1, len(comps) + 1):
            tail = comps[-k:]
            if all(other[-k:] != tail for q, other in parts.items() if q != p):
                break
        out[p] = os.path.join(*tail)
    return out


def point_labels(docs: Sequence[dict]) -> List[str]:
    """Legend labels that tell runs apart: the model with its ATS setting (variant, blocks, budget), the
    checkpoint, the views; runs still alike get their results folder, then a number."""
    checkpoints = _short_paths([d["checkpoint"] for d in docs if d.get("checkpoint")])
    labels = []
    for d in docs:
        model = d.get("model") or {}
        label = model.get("label") or model.get("name") or "?"
        ats = model.get("ats")
        if ats and "ATS" not in label:  # older results files name the model only
            label += f" + ATS {ats.get('variant')} k{ats.get('tokens')}"
        weights = checkpoints[d["checkpoint"]] if d.get("checkpoint") else "random weights"
        labels.append(f"{label}, {weights} [{(d.get('protocol') or {}).get('views', '?')}]")
    runs = _short_paths([os.path.dirname(os.path.abspath(d["_path"])) for d in docs])
    shared = [labels.count(label) > 1 for label in labels]
    labels = [label + (f" ({runs[os.path.dirname(os.path.abspath(d['_path']))]})" if dup else "")
              for label, d, dup in zip(labels, docs, shared)]
    shared = [labels.count(label) > 1 for label in labels]  # the very same folder given twice
    return [label + (f" #{labels[:i].count(label) + 1}" if dup else "")
            for i, (label, dup) in enumerate(zip(labels, shared))]


def _test_set(doc: dict) -> str:
    """What a top-1 was measured on: the annotation file (or data folder) and the split."""
    source = doc.get("annotation") or ((doc.get("config") or {}).get("DATA") or {}).get("PATH_TO_DATA_DIR") or "?"
    return f"split {doc.get('split', '?')!r} of {source}"


def test_set_warning(docs: Sequence[dict]) -> Optional[str]:
    """One line when the files were evaluated on different test sets: their top-1 values do not compare."""
    groups: Dict[str, List[str]] = {}
    for d in docs:
        groups.setdefault(_test_set(d), []).append(d["_path"])
    if len(groups) < 2:
        return None
    listing = "; ".join(f"{key}: {', '.join(paths)}" for key, paths in groups.items())
    return f"the results come from {len(groups)} different test sets, so their top-1 values do not compare ({listing})"


def plot_gflops_vs_top1(docs: Sequence[dict], path: str, title: str = "") -> dict:
    """GFLOPs over all views (x, as the paper tables) against video top-1 (y), one numbered point per file.

    Results evaluated with different views or on different test sets are still plotted, but the views are
    in the legend and different test sets give a warning, since such numbers are not comparable.
    """
    plt = _pyplot()
    points, skipped = [], []
    for d, label in zip(docs, point_labels(docs)):
        g, top1 = d["gflops"].get("total"), d["metrics"]["video"].get("top1")
        if g is None or top1 is None:
            skipped.append(d["_path"])
            continue
        points.append({"label": label, "gflops": float(g), "top1": float(top1),
                       "ats": d.get("model", {}).get("ats") is not None, "path": d["_path"], "test_set": _test_set(d)})
    if not points:
        raise VideoATSError("none of the results files has both GFLOPs and top-1 "
                            f"({', '.join(skipped)}); re-run `videoats eval` with the FLOPs counter available")
    warning = test_set_warning([d for d in docs if d["_path"] not in skipped])
    fig, ax = plt.subplots(figsize=(7, 4.8))
    cmap = plt.get_cmap("tab10")
    for i, p in enumerate(points, 1):
        ax.scatter(p["gflops"], p["top1"], s=60, marker="o" if not p["ats"] else "^", color=cmap((i - 1) % 10),
                   edgecolor="black", linewidth=0.5, label=f"{i}. {p['label']}", zorder=3)
        ax.annotate(str(i), (p["gflops"], p["top1"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("GFLOPs, total over views (ATS: mean per-sample count)")
    ax.set_ylabel("video top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Accuracy vs compute (o dense, ^ ATS)", fontsize=10)
    # below the axes, one label a line: long labels neither cover points nor squeeze the plot
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.14), frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return {"output": os.path.abspath(path), "points": points, "skipped": skipped,
            "warnings": [warning] if warning else []}
