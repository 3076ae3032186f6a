"""ATS against the other ways to drop tokens, with one accounting: what `videoats compare` measures.

Every method runs at the same blocks, variant and budgets (`ATSConfig.selection`: ATS, top-k, random, EViT,
ToMe) through `videoats eval`'s code, so top-1 and GFLOPs are what an evaluation reports: video top-1 over the
test split, GFLOPs per view as each sample's own count (mean, and the min-max spread over the views). Points:
- off the shelf: the given weights as they are, one point per budget (random: one per seed);
- fine-tuned (`finetune.epochs` > 0): the weights fine-tuned briefly with each method at one budget, once per
  seed, then evaluated at every budget, so the spread over fine-tuning seeds is measured, not assumed;
- the wall clock of each method's forward pass on this machine, on one batch of test views, next to its GFLOPs.
Differences are paired, because a small test split moves in steps of one clip: at each budget, the clips the
reference method (the first; ATS by default) gets right and the other wrong and the reverse, and the top-1
difference at equal GFLOPs, read both ways along the curves (methods spend differently at one budget: ATS
keeps fewer tokens than it, EViT more), per seed, with their mean and range.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .ats.core import METHOD_NAMES, SELECTIONS
from .atomic import atomic_write_text
from .checkpoint import load_weights
from .config import apply_overrides, ats_from_cfg
from .data import build_dataset
from .errors import VideoATSError
from .evaluation.evaluate import evaluate
from .evaluation.plots import _pyplot
from .figures import finish_scaling_plot
from .models.ats_patch import apply_ats
from .models.build import build_from_cfg
from .runner import Runner
from .runtime import compiled_for_inference, inference_autocast, resolve_device

SEEDED = ("random",)  # off the shelf, only the random draw depends on a seed
STAGES = ("off-the-shelf", "fine-tuned")


@dataclass
class Finetune:
    """A short fine-tune of the weights with each method: `epochs` over `cfg`'s train split at `budget`."""
    cfg: object
    epochs: int
    budget: float


@dataclass
class Plan:
    """What a comparison runs: `cfg` evaluates (its ATS section gives the blocks and the variant), `checkpoint`
    the weights; `methods` are selections, the first of them the one the others are measured against."""
    cfg: object
    checkpoint: str
    methods: Sequence[str]
    budgets: Sequence[float]
    seeds: Sequence[int]
    output: str
    finetune: Optional[Finetune] = None
    timing_views: int = 16
    data: str = ""
    notes: List[str] = field(default_factory=list)

    def check(self) -> "Plan":
        unknown = [m for m in self.methods if m not in SELECTIONS]
        if unknown or not self.methods:
            raise VideoATSError(f"--methods {','.join(self.methods)}: choose from {', '.join(SELECTIONS)}")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise VideoATSError(f"--budgets {self.budgets}: give ratios in (0, 1]")
        if not self.seeds:
            raise VideoATSError("--seeds: give at least one integer")
        if not list(self.cfg.ATS.BLOCKS):
            raise VideoATSError("the config's ATS.BLOCKS is empty: name the blocks every method reduces at")
        if self.timing_views < 1:
            raise VideoATSError(f"--timing-views {self.timing_views}: time the methods on at least 1 view")
        # every method on this model and variant, before any long work (ToMe refuses `joint`, CvT EViT and ToMe)
        with torch.device("meta"):
            model = build_from_cfg(self.cfg, with_ats=False)
        for method in self.methods:
            apply_ats(model, ats_from_cfg(_ats_cfg(self.cfg, method, self.budgets[0], self.seeds[0])))
        return self


def _ats_cfg(cfg, method: str, budget: float, seed: int):
    run = cfg.clone()
    run.ATS.ENABLE = True
    apply_overrides(run, ["ATS.TOKENS", f"[{budget}]", "ATS.SELECTION", method, "ATS.SEED", str(seed)])
    return run


def _correct(results_dir: str) -> np.ndarray:
    with open(os.path.join(results_dir, "predictions.jsonl")) as f:
        rows = sorted((json.loads(line) for line in f), key=lambda r: r["video_index"])
    return np.array([bool(r["correct"]) for r in rows])


@lru_cache(maxsize=None)
def code_digest() -> str:
    """A digest of videoats' own source: a result that other code made is never read back as this code's."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(n for n in names if n.endswith((".py", ".yaml"))):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def _stat(path: str) -> Optional[List[int]]:
    if not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _identity(cfg, checkpoint: str) -> dict:
    """What a result depends on: the config, the weights file, the annotation and label files of the data
    folder (a video changed in place under the same name is not noticed) and the code."""
    data = cfg.DATA.PATH_TO_DATA_DIR
    listed = {} if not os.path.isdir(data) else {
        name: _stat(os.path.join(data, name)) for name in sorted(os.listdir(data))
        if os.path.isfile(os.path.join(data, name))}
    return dict(config=cfg.dump(), checkpoint=os.path.abspath(checkpoint), weights=_stat(checkpoint), data=listed,
                code=code_digest())


def _point(cfg, checkpoint: str, out: str, **label) -> dict:
    """One evaluation's point; a folder that holds the same evaluation (`_identity`) is read back instead, so an
    interrupted or extended comparison redoes nothing."""
    key = _identity(cfg, checkpoint)
    marker = os.path.join(out, "point.json")
    try:
        with open(marker) as f:
            done = json.load(f)
        if done["key"] == key:
            return dict(done["point"], correct=_correct(out))
    except (OSError, ValueError, KeyError):
        pass
    started = time.perf_counter()
    result = evaluate(cfg, checkpoint=checkpoint, output_dir=out, progress=False)
    g = result["gflops"]
    spread = (g.get("adaptive") or {}).get("per_view") or dict(mean=g["per_view"], min=g["per_view"],
                                                               max=g["per_view"])
    point = dict(label, top1=result["metrics"]["video"]["top1"], gflops_mean=spread["mean"],
                 gflops_min=spread["min"], gflops_max=spread["max"],
                 eval_seconds=round(time.perf_counter() - started, 2))
    atomic_write_text(marker, json.dumps(dict(key=key, point=point)))
    return dict(point, correct=_correct(out))


def _finetuned(plan: Plan, method: str, seed: int, say) -> str:
    """The weights fine-tuned with `method` at the fine-tune budget with `seed`. Each fine-tune has a folder of
    its own identity (config, starting weights, data, code): the training run resumes there (a finished one
    trains nothing more, an interrupted one goes on), and a changed setting gets a new folder."""
    # imported here, as `videoats train` does: the training loop brings TensorBoard, which nothing else of a
    # comparison (nor the CLI's start) needs
    from .train.loop import train

    ft = plan.finetune
    cfg = _ats_cfg(ft.cfg, method, ft.budget, seed)
    apply_overrides(cfg, ["TRAIN.CHECKPOINT_FILE", plan.checkpoint, "TRAIN.EPOCHS", str(ft.epochs), "SEED", str(seed),
                          "TRAIN.FINAL_TEST", "False", "TRAIN.EVAL_PERIOD", "0", "TRAIN.AUTO_RESUME", "True"])
    identity = hashlib.sha256(json.dumps(_identity(cfg, plan.checkpoint), sort_keys=True).encode()).hexdigest()
    cfg.OUTPUT_DIR = os.path.join(plan.output, "finetune", f"{method}_seed{seed}_{identity[:10]}")
    started = time.perf_counter()
    done = train(cfg, progress=False, echo=lambda s: None)
    if done["steps_this_run"]:
        say(f"fine-tuned {METHOD_NAMES[method]} (seed {seed}, budget {ft.budget}, {ft.epochs} epochs) in "
            f"{time.perf_counter() - started:.0f} s")
    return done["last_checkpoint"]  # no validation split: the last weights


def timed_pass(runner: Runner, views: torch.Tensor) -> float:
    """Seconds of one batch through `runner`, as the evaluation runs it (its forward, autocast and accounting;
    on CUDA, synchronised)."""
    if views.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    runner.run(views)
    if views.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def _timing_views(cfg, count: int) -> torch.Tensor:
    """The first `count` test views (decoded once), the batch every method is timed on."""
    dataset = build_dataset(cfg, cfg.TEST.SPLIT)
    views: List[torch.Tensor] = []
    for i in range(len(dataset)):
        item = dataset[i]
        if not item.get("failed"):
            views.extend(item["video"])
        if len(views) >= count:
            break
    if not views:
        raise VideoATSError("no test view could be decoded to time the methods on")
    return torch.stack(views[:count])


def wall_clock(plan: Plan, say, repeats: int = 7) -> List[dict]:
    """Seconds per view of the dense model and of every method at every budget (the given weights, one batch
    of test views, on the config's device, with the evaluation's TEST.PRECISION and TEST.COMPILE): after a
    warm-up pass of each, `repeats` rounds that time every setting once in turn, and the fastest pass of each.
    In turn, so that a slow spell of a shared machine falls on every setting alike; the fastest, because the
    slower passes measure the neighbours too."""
    device = resolve_device(plan.cfg)
    views = _timing_views(plan.cfg, plan.timing_views).to(device)
    model = build_from_cfg(plan.cfg, with_ats=False).eval()
    load_weights(model, plan.checkpoint)
    model.to(device)
    settings = [dict(method="dense", budget=None)] + [dict(method=m, budget=b) for m in plan.methods
                                                      for b in plan.budgets]
    configs = [None] + [ats_from_cfg(_ats_cfg(plan.cfg, s["method"], s["budget"], plan.seeds[0]))
                        for s in settings[1:]]
    autocast = inference_autocast(str(plan.cfg.TEST.PRECISION), device)
    runners = []
    for ats in configs:  # each with its own forward (a compiled one is compiled for its ATS setting)
        apply_ats(model, ats)
        runners.append(Runner(model, device, forward=compiled_for_inference(model, bool(plan.cfg.TEST.COMPILE)),
                              autocast=autocast))
    best = [float("inf")] * len(settings)
    for round_ in range(repeats + 1):
        for i, (ats, runner) in enumerate(zip(configs, runners)):
            apply_ats(model, ats)
            seconds = timed_pass(runner, views)
            best[i] = best[i] if round_ == 0 else min(best[i], seconds)  # round 0 warms up
    apply_ats(model, None)
    say(f"timed the dense model and {len(settings) - 1} settings on {views.shape[0]} views ({device.type})")
    return [dict(s, seconds_per_view=t / views.shape[0]) for s, t in zip(settings, best)]


def _gap(top1: float, curve: List[dict], gflops: float) -> Optional[float]:
    """`top1` minus the curve's top-1 at `gflops` (linear between its points); None outside the curve."""
    xs, ys = zip(*sorted((p["gflops_mean"], p["top1"]) for p in curve))
    return round(top1 - float(np.interp(gflops, xs, ys)), 3) if xs[0] <= gflops <= xs[-1] else None


def _spread(values: Sequence[float]) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return dict(mean=None, min=None, max=None, n=0)
    return dict(mean=round(float(np.mean(v)), 3), min=round(min(v), 3), max=round(max(v), 3), n=len(v))


def paired_rows(points: List[dict], reference: str, methods: Sequence[str]) -> List[dict]:
    """For every stage and budget, `reference` against each other method, per seed: the clips only the
    reference gets right and only the other does (same budget), and the reference's top-1 minus the other's at
    equal GFLOPs, both ways: the other's curve read at the reference point's mean GFLOPs, and the other's point
    against the reference's curve (None where a point lies outside the other curve), with the mean and range
    over seeds. A method with one point at a budget (off the shelf, all but random) pairs with every seed of
    the other; fine-tuned, seed s pairs with seed s."""
    rows = []
    for stage in STAGES:
        here = [p for p in points if p["stage"] == stage]
        if not here:
            continue
        budgets = sorted({p["budget"] for p in here})
        for budget in budgets:
            refs = [p for p in here if p["method"] == reference and p["budget"] == budget]
            row = dict(stage=stage, budget=budget, reference=reference,
                       reference_top1=[r["top1"] for r in refs], reference_gflops=[r["gflops_mean"] for r in refs])
            for method in methods:
                if method == reference:
                    continue
                pairs = []
                others = [p for p in here if p["method"] == method and p["budget"] == budget]
                for ref, other in ((r, o) for r in refs for o in others
                                   if r["seed"] == o["seed"] or len(refs) == 1 or len(others) == 1):
                    curve = [p for p in here if p["method"] == method and p["seed"] == other["seed"]]
                    ref_curve = [p for p in here if p["method"] == reference and p["seed"] == ref["seed"]]
                    at_other = _gap(other["top1"], ref_curve, other["gflops_mean"])
                    pairs.append(dict(seed=other["seed"] if len(others) > 1 else ref["seed"],
                                      reference_only=int((ref["correct"] & ~other["correct"]).sum()),
                                      other_only=int((~ref["correct"] & other["correct"]).sum()),
                                      difference_at_reference_gflops=_gap(ref["top1"], curve, ref["gflops_mean"]),
                                      difference_at_other_gflops=None if at_other is None else -at_other))
                row[method] = dict(pairs=pairs,
                                   difference=_spread([p["difference_at_reference_gflops"] for p in pairs]),
                                   difference_at_other=_spread([p["difference_at_other_gflops"] for p in pairs]))
            rows.append(row)
    return rows


def _bars(centre: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """matplotlib's error bar lengths (below, above), never negative: the mean of equal floats can miss them by
    a rounding step."""
    return np.maximum(0.0, [centre - low, high - centre])


def plot(doc: dict, path: str) -> str:
    """Top-1 against mean GFLOPs per view, one panel per stage: a curve per method (mean over seeds, the
    vertical bar their range), each point's horizontal bar the per-sample GFLOPs range."""
    plt = _pyplot()
    stages = [s for s in STAGES if any(p["stage"] == s for p in doc["points"])]
    fig, axes = plt.subplots(1, len(stages), figsize=(6.4 * len(stages), 4.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for i, method in enumerate(doc["methods"]):
            by_budget: Dict[float, List[dict]] = {}
            for p in doc["points"]:
                if p["stage"] == stage and p["method"] == method:
                    by_budget.setdefault(p["budget"], []).append(p)
            if not by_budget:
                continue
            pts = sorted((np.mean([p["gflops_mean"] for p in v]), np.mean([p["top1"] for p in v]),
                          min(p["top1"] for p in v), max(p["top1"] for p in v),
                          min(p["gflops_min"] for p in v), max(p["gflops_max"] for p in v)) for v in by_budget.values())
            x, y, lo, hi, gmin, gmax = map(np.array, zip(*pts))
            ax.errorbar(x, y, xerr=_bars(x, gmin, gmax), yerr=_bars(y, lo, hi), fmt="os^vD"[i % 5] + "-",
                        capsize=2, elinewidth=0.7, label=METHOD_NAMES[method])
        title = f"{stage}; {doc['clips']} test clips; bars: seeds (top-1), per-sample range (GFLOPs)"
        finish_scaling_plot(plt, fig, ax, (doc["dense"]["gflops_mean"], doc["dense"]["top1"]), title, None)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _public(p: dict) -> dict:
    return {k: v for k, v in p.items() if k != "correct"}


def compare(plan: Plan, say: Callable[[str], None] = print) -> dict:
    """Run the plan (module docstring); writes OUTPUT/comparison.json and OUTPUT/top1_vs_gflops.png."""
    plan.check()
    cfg = plan.cfg
    dense_cfg = cfg.clone()
    dense_cfg.ATS.ENABLE = False
    dense = _point(dense_cfg, plan.checkpoint, os.path.join(plan.output, "dense"), method="dense",
                   stage="off-the-shelf", budget=None, seed=None)
    say(f"dense: top-1 {dense['top1']:.2f}% at {dense['gflops_mean']:.4f} GFLOPs/view")
    points = []

    def measure(stage: str, weights: str, method: str, budget: float, seed: int) -> None:
        out = os.path.join(plan.output, stage, f"{method}_{budget}_seed{seed}")
        p = _point(_ats_cfg(cfg, method, budget, seed), weights, out, method=method, stage=stage, budget=budget,
                   seed=seed)
        points.append(p)
        say(f"{stage:<13} {METHOD_NAMES[method]:<6} budget {budget:<4} seed {seed}: top-1 {p['top1']:6.2f}%  "
            f"GFLOPs/view {p['gflops_mean']:.4f} ({p['gflops_min']:.4f}-{p['gflops_max']:.4f})")

    for method in plan.methods:
        for budget in plan.budgets:
            for seed in (plan.seeds if method in SEEDED else plan.seeds[:1]):
                measure("off-the-shelf", plan.checkpoint, method, budget, seed)
    if plan.finetune is not None and plan.finetune.epochs > 0:
        for method in plan.methods:
            for seed in plan.seeds:
                weights = _finetuned(plan, method, seed, say)
                for budget in plan.budgets:
                    measure("fine-tuned", weights, method, budget, seed)
    timing = wall_clock(plan, say)
    doc = dict(checkpoint=plan.checkpoint, data=plan.data, clips=int(len(dense["correct"])),
               blocks=list(cfg.ATS.BLOCKS), variant=cfg.ATS.VARIANT, methods=list(plan.methods),
               budgets=list(plan.budgets), seeds=list(plan.seeds),
               finetune=None if plan.finetune is None or plan.finetune.epochs <= 0 else
               dict(epochs=plan.finetune.epochs, budget=plan.finetune.budget),
               dense=_public(dense), points=[_public(p) for p in points], wall_clock=timing,
               paired=paired_rows(points, plan.methods[0], plan.methods), notes=plan.notes)
    document = os.path.join(plan.output, "comparison.json")
    atomic_write_text(document, json.dumps(doc, indent=1))  # first, so that no measurement waits on the plot
    doc["plot"] = plot(doc, os.path.join(plan.output, "top1_vs_gflops.png"))
    atomic_write_text(document, json.dumps(doc, indent=1))
    return doc
