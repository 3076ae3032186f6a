"""The ATS paper's three figures, measured on the synthetic benchmark.

1. Kept tokens per ATS stage, as histograms over the test set ("Adaptive Sampling").
2. Top-1 against GFLOPs per view for several budgets ("Model Scaling"): dense, ATS off the shelf, ATS
   fine-tuned, and a fixed-count baseline that keeps the top-k tokens by the very same significance score, k
   being the budget for every clip. It is the same ATS code with `selection="top_k"` (a top-k pick instead of
   the inverse transform sample), so the two differ in the sampling rule alone and what adaptivity buys shows
   as the gap between the curves at equal mean GFLOPs.
3. Kept tokens against each complexity factor that `make-synthetic` records in scenes.csv, with Spearman's
   rank correlation (the Pearson correlation of the ranks, ties averaged).

The test clips are decoded once and every setting runs on the same tensors, so the settings differ in the
model alone. Clips are forwarded in a fixed order and batch size: the same checkpoints give the same figures.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .data import build_dataset
from .errors import VideoATSError
from .evaluation.plots import _pyplot
from .flops import dense_gflops
from .models import apply_ats
from .runner import Runner

# every numeric factor of scenes.csv; the first is the one that should matter most for a `tube` sample: the
# locations that anything moves through are the ones a motion classifier has to look at
FACTORS = ("moving_pixels", "object_area", "objects", "object_radius", "textured", "distractors",
           "moving_distractors")
PRIMARY = FACTORS[0]


# ---------------------------------------------------------------------------------------------- statistics


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    _, group, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=r) / counts)[group]


def spearman(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Spearman's rho; None where either side is constant (no ranking to correlate)."""
    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


# ---------------------------------------------------------------------------------------------- data


def load_test_clips(cfg) -> dict:
    """Every test video's single view (the benchmark protocol is 1x1) as one tensor, with labels, names and
    the complexity factors of scenes.csv (looked up by file name)."""
    dataset = build_dataset(cfg, cfg.TEST.SPLIT)
    if dataset.views_per_video != 1:
        raise VideoATSError(f"the figures take one view per video; the config asks for "
                            f"{dataset.views_per_video} (set TEST.NUM_ENSEMBLE_VIEWS 1 TEST.NUM_SPATIAL_CROPS 1)")
    table = os.path.join(cfg.DATA.PATH_TO_DATA_DIR, "scenes.csv")
    if not os.path.isfile(table):
        raise VideoATSError(f"{table} not found: the figures need the complexity factors that "
                            "`videoats make-synthetic` writes next to the videos")
    with open(table, newline="") as f:
        scenes = {row["name"]: row for row in csv.DictReader(f)}
    videos, labels, factors = [], [], {k: [] for k in FACTORS}
    for i in range(len(dataset)):
        item = dataset[i]
        if item.get("failed"):
            raise VideoATSError(f"test video {item['failed']['path']} cannot be decoded: {item['failed']['reason']}")
        videos.append(item["video"][0])
        labels.append(int(item["label"]))
        row = scenes.get(os.path.basename(dataset.videos[i].path))
        if row is None:
            raise VideoATSError(f"{dataset.videos[i].path} is not listed in {table}")
        for k in FACTORS:
            factors[k].append(float(row[k]))
    return {"video": torch.stack(videos), "label": torch.tensor(labels), "factors": factors,
            "label_names": list(dataset.label_names)}


# ---------------------------------------------------------------------------------------------- running


def run_setting(model, clips: dict, batch: int = 16, reverse: bool = False) -> dict:
    """Predictions, per-stage kept tokens and GFLOPs of every clip (frames reversed if asked), through
    `runner.Runner` as every job that forwards views; a dense model's GFLOPs are the fvcore count."""
    video = clips["video"].flip(2) if reverse else clips["video"]
    dense = dense_gflops(model, input_shape=tuple(video.shape[1:]))
    out = Runner(model, batch_size=batch).run(video)
    pred = out.logits.argmax(dim=1)
    adaptive = getattr(model, "ats", None) is not None
    g = out.gflops if adaptive else torch.full((len(pred),), float(dense), dtype=torch.float64)
    return {"pred": pred, "gflops": g, "kept": out.kept,
            "top1": 100.0 * float((pred == clips["label"]).double().mean()), "dense_gflops": float(dense)}


def _summary(name: str, weights: str, budget, result: dict) -> dict:
    return {"setting": name, "weights": weights, "budget": budget, "top1": round(result["top1"], 2),
            "gflops_per_view": round(float(result["gflops"].mean()), 6),
            "kept_tokens_mean": {str(b): round(float(v.double().mean()), 2) for b, v in result["kept"].items()}}


def measure(model, dense_state: dict, tuned_state: dict, ats: dict, budgets: Sequence[float],
            clips: dict, say=lambda s: None) -> Tuple[dict, dict]:
    """Every setting of figure 2 on the same clips; returns (the JSON document, the main ATS run).

    `ats` is the fine-tuned setting (blocks, tokens, variant); `budgets` are the ratios swept for the curves.
    """
    points, main = [], None

    def point(name, weights, state, budget, top_k=False):
        model.load_state_dict(state)
        apply_ats(model, None if budget is None else
                  dict(ats, tokens=budget, selection="top_k" if top_k else "inverse_transform"))
        result = run_setting(model, clips)
        points.append(_summary(name, weights, budget, result))
        say(f"{name:<22} {weights:<10} budget {str(budget):<5} top-1 {result['top1']:6.2f}%  "
            f"GFLOPs/view {points[-1]['gflops_per_view']:.4f}")
        return result

    dense = point("dense", "dense", dense_state, None)
    reversed_pred = run_setting(model, clips, reverse=True)["pred"]
    for b in budgets:
        point("ATS off the shelf", "dense", dense_state, b)
        point("top-k off the shelf", "dense", dense_state, b, top_k=True)
    for b in budgets:
        result = point("ATS fine-tuned", "fine-tuned", tuned_state, b)
        if b == ats["tokens"]:
            main = result
        point("top-k fine-tuned", "fine-tuned", tuned_state, b, top_k=True)
    if main is None:
        main = point("ATS fine-tuned", "fine-tuned", tuned_state, ats["tokens"])
    doc = {"videos": int(len(clips["label"])), "ats": ats, "budgets": list(budgets),
           "dense": {"top1": round(dense["top1"], 2), "gflops_per_view": round(dense["dense_gflops"], 6),
                     "reversed_frames_change_prediction_pct":
                         round(100.0 * float((reversed_pred != dense["pred"]).double().mean()), 2)},
           "points": points, "equal_gflops": equal_gflops_gaps(points),
           "adaptivity": adaptivity(main, clips["factors"])}
    return doc, main


def equal_gflops_gaps(points: List[dict]) -> List[dict]:
    """ATS top-1 minus the top-k curve's (same weights) at the ATS point's mean GFLOPs, the top-k curve
    interpolated linearly in GFLOPs; points outside the curve's GFLOPs range are left out."""
    gaps = []
    for weights in ("dense", "fine-tuned"):
        curve = sorted((p["gflops_per_view"], p["top1"]) for p in points
                       if p["weights"] == weights and p["setting"].startswith("top-k"))
        if len(curve) < 2:
            continue
        xs, ys = zip(*curve)
        for p in points:
            if p["weights"] == weights and p["setting"].startswith("ATS") and xs[0] <= p["gflops_per_view"] <= xs[-1]:
                base = float(np.interp(p["gflops_per_view"], xs, ys))
                gaps.append({"weights": weights, "budget": p["budget"], "gflops_per_view": p["gflops_per_view"],
                             "ats_top1": p["top1"], "top_k_top1_at_same_gflops": round(base, 2),
                             "gap": round(p["top1"] - base, 2)})
    return gaps


def adaptivity(result: dict, factors: Dict[str, List[float]]) -> dict:
    """Spearman's rho of kept tokens (every ATS stage, and GFLOPs) against every complexity factor."""
    out = {"primary_factor": PRIMARY, "by_factor": {}}
    for name, values in factors.items():
        rho = {f"block {b}": spearman(v.numpy(), values) for b, v in result["kept"].items()}
        rho["gflops"] = spearman(result["gflops"].numpy(), values)
        out["by_factor"][name] = {k: None if v is None else round(v, 3) for k, v in rho.items()}
    return out


# ---------------------------------------------------------------------------------------------- figures

_FAMILIES = {  # (setting, weights): (colour, marker, line)
    ("ATS off the shelf", "dense"): ("tab:blue", "o", "-"), ("top-k off the shelf", "dense"): ("tab:blue", "x", ":"),
    ("ATS fine-tuned", "fine-tuned"): ("tab:red", "o", "-"), ("top-k fine-tuned", "fine-tuned"): ("tab:red", "x", ":")}


def plot_scaling(doc: dict, path: str) -> str:
    """Figure 2: top-1 against mean GFLOPs per view, one curve per (sampling rule, weights)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (name, weights), (color, marker, line) in _FAMILIES.items():
        pts = sorted((p["gflops_per_view"], p["top1"]) for p in doc["points"]
                     if p["setting"] == name and p["weights"] == weights)
        if pts:
            ax.plot(*zip(*pts), color=color, marker=marker, linestyle=line, label=name)
    dense = doc["dense"]
    return finish_scaling_plot(plt, fig, ax, (dense["gflops_per_view"], dense["top1"]),
                               f"ATS vs a fixed top-k count by the same score; budgets {doc['budgets']}", path)


def finish_scaling_plot(plt, fig, ax, dense: Tuple[float, float], title: str, path: Optional[str]) -> Optional[str]:
    """A top-1 against GFLOPs-per-view plot's common end: the dense model's point (GFLOPs, top-1) as a star,
    the axes' names, `title`, grid and legend; saved to `path` (returned; None: one panel of several, the caller
    saves the figure)."""
    ax.plot([dense[0]], [dense[1]], "k*", markersize=12, label="dense")
    ax.set_xlabel("GFLOPs per view (mean over the test clips)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if path is None:
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_adaptivity(main: dict, factors: Dict[str, List[float]], rho: dict, path: str) -> str:
    """Figure 3: kept tokens at the first ATS stage of every clip against every complexity factor."""
    plt = _pyplot()
    first = min(main["kept"])
    kept = main["kept"][first].double().numpy()
    names = list(factors)
    cols = 4
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, size=len(kept))  # fixed: the same figure every run
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        x = np.asarray(factors[name])
        discrete = len(np.unique(x)) <= 5
        ax.scatter(x + (jitter if discrete else 0), kept, s=6, alpha=0.5)
        r = rho["by_factor"][name][f"block {first}"]
        ax.set_title(f"{name}: rho {'n/a' if r is None else f'{r:+.2f}'}", fontsize=9)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel(f"kept tokens, block {first}", fontsize=8)
        ax.tick_params(labelsize=7)
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
