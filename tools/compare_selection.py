"""ATS against its two selection baselines on the embedded benchmark, with one accounting.

The shipped checkpoint (`videoats demo`'s) is evaluated on the benchmark's 300 test clips, through
`videoats eval`'s code, with each way of picking tokens at the same ATS blocks and budgets:
- `inverse_transform`: ATS (a content-dependent count, at most the budget);
- `top_k`: the budget's highest-scoring tokens by the same score (a fixed count);
- `random`: the budget's count drawn uniformly at random, for several seeds.
For every point: top-1, GFLOPs per view (mean, min, max over the clips) and the wall clock of the evaluation
on this machine. Differences are paired: at each budget, the clips one rule gets right and the other
wrong, so a gap can be read against the clips behind it (one clip is 0.33 points). Because ATS keeps fewer
tokens than the budget, the baselines are also read at ATS's mean GFLOPs (interpolated along their curve).

    python tools/compare_selection.py                         # budgets 0.2-0.8, random seeds 0-2
    python tools/compare_selection.py --budgets 0.5,0.7 --seeds 0 --output /tmp/cmp --json

Writes OUTPUT/comparison.json and OUTPUT/top1_vs_gflops.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List

import numpy as np

from videoats.commands.demo import shipped_test_config
from videoats.config import apply_overrides
from videoats.evaluation.evaluate import evaluate
from videoats.evaluation.plots import _pyplot
from videoats.figures import finish_scaling_plot
from videoats.inference.shipped import CHECKPOINT, ats_overrides

METHODS = ("inverse_transform", "top_k", "random")
NAMES = {"inverse_transform": "ATS", "top_k": "top-k", "random": "random"}


def _correct(results_dir: str) -> np.ndarray:
    with open(os.path.join(results_dir, "predictions.jsonl")) as f:
        rows = sorted((json.loads(line) for line in f), key=lambda r: r["video_index"])
    return np.array([bool(r["correct"]) for r in rows])


def _point(cfg, out: str, method: str, budget, seed: int) -> dict:
    run = cfg.clone()
    if budget is not None:
        run.ATS.ENABLE = True
        apply_overrides(run, ats_overrides() + ["ATS.TOKENS", f"[{budget}]", "ATS.SELECTION", method,
                                                "ATS.SEED", str(seed)])
    else:
        run.ATS.ENABLE = False
    start = time.perf_counter()
    result = evaluate(run, checkpoint=str(CHECKPOINT), output_dir=out, progress=False)
    seconds = time.perf_counter() - start
    g = result["gflops"]
    spread = (g.get("adaptive") or {}).get("per_view") or {"mean": g["per_view"], "min": g["per_view"],
                                                            "max": g["per_view"]}
    return dict(method=method if budget is not None else "dense", budget=budget, seed=seed,
                top1=result["metrics"]["video"]["top1"], gflops_mean=spread["mean"], gflops_min=spread["min"],
                gflops_max=spread["max"], seconds=round(seconds, 2), correct=_correct(out))


def _at_gflops(points: List[dict], gflops: float) -> float:
    """A curve's top-1 at `gflops`, linear between its points (nan outside them)."""
    xs, ys = zip(*sorted((p["gflops_mean"], p["top1"]) for p in points))
    return float(np.interp(gflops, xs, ys)) if xs[0] <= gflops <= xs[-1] else float("nan")


def compare(budgets: List[float], seeds: List[int], output: str, say=print) -> dict:
    cfg, data = shipped_test_config()
    dense = _point(cfg, os.path.join(output, "dense"), "dense", None, 0)
    runs: Dict[str, List[dict]] = {m: [] for m in METHODS}
    for budget in budgets:
        for method in METHODS:
            for seed in (seeds if method == "random" else [0]):
                p = _point(cfg, os.path.join(output, f"{method}_{budget}_{seed}"), method, budget, seed)
                runs[method].append(p)
                say(f"{NAMES[method]:<7} budget {budget:<4} seed {seed}: top-1 {p['top1']:6.2f}%  GFLOPs/view "
                    f"{p['gflops_mean']:.4f} ({p['gflops_min']:.4f}-{p['gflops_max']:.4f})  {p['seconds']:.1f} s")
    rows = []
    for budget in budgets:
        ats = next(p for p in runs["inverse_transform"] if p["budget"] == budget)
        row = dict(budget=budget, ats=_summary(ats))
        for method in ("top_k", "random"):
            same = [p for p in runs[method] if p["budget"] == budget]
            paired = [dict(seed=p["seed"], ats_only=int((ats["correct"] & ~p["correct"]).sum()),
                           other_only=int((~ats["correct"] & p["correct"]).sum())) for p in same]
            curves = [[p for p in runs[method] if p["seed"] == s] for s in sorted({p["seed"] for p in same})]
            matched = [_at_gflops(c, ats["gflops_mean"]) for c in curves]
            row[method] = dict(top1=[p["top1"] for p in same], gflops_mean=[p["gflops_mean"] for p in same],
                               paired=paired, top1_at_ats_gflops=matched,
                               ats_minus_other_at_ats_gflops=[round(ats["top1"] - m, 2) for m in matched])
        rows.append(row)
    doc = dict(checkpoint=str(CHECKPOINT), data=data, clips=int(len(dense["correct"])), budgets=budgets,
               seeds=seeds, ats=dict(ats_overrides()[i:i + 2] for i in range(0, len(ats_overrides()), 2)),
               dense=_summary(dense), points={m: [_summary(p) for p in runs[m]] for m in METHODS}, rows=rows)
    doc["plot"] = _plot(doc, os.path.join(output, "top1_vs_gflops.png"))
    with open(os.path.join(output, "comparison.json"), "w") as f:
        json.dump(doc, f, indent=1)
    return doc


def _summary(p: dict) -> dict:
    return {k: v for k, v in p.items() if k != "correct"}


def _plot(doc: dict, path: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method, style in (("inverse_transform", "o-"), ("top_k", "x:"), ("random", "s--")):
        by_budget = {}
        for p in doc["points"][method]:
            by_budget.setdefault(p["budget"], []).append(p)
        pts = [(np.mean([p["gflops_mean"] for p in v]), np.mean([p["top1"] for p in v]),
                np.min([p["top1"] for p in v]), np.max([p["top1"] for p in v])) for v in by_budget.values()]
        x, y, lo, hi = map(np.array, zip(*sorted(pts)))
        ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt=style, capsize=3, label=NAMES[method] +
                    (f" (mean, min-max over {len(doc['seeds'])} seeds)" if method == "random" else ""))
    return finish_scaling_plot(plt, fig, ax, (doc["dense"]["gflops_mean"], doc["dense"]["top1"]),
                               f"Selection rules at the same ATS blocks; {doc['clips']} clips, budgets "
                               f"{doc['budgets']}", path)


def table(doc: dict) -> str:
    d = doc["dense"]
    lines = [f"dense: top-1 {d['top1']:.2f}% at {d['gflops_mean']:.4f} GFLOPs/view ({doc['clips']} clips)", "",
             "budget  ATS top-1 @ GFLOPs    top-k top-1 @ GFLOPs   random top-1 (seeds) @ GFLOPs   "
             "ATS-only / other-only right clips (top-k; random per seed)   ATS minus top-k, random at ATS GFLOPs"]
    for r in doc["rows"]:
        a, k, q = r["ats"], r["top_k"], r["random"]
        pairs = f"{k['paired'][0]['ats_only']}/{k['paired'][0]['other_only']}; " + \
            ", ".join(f"{p['ats_only']}/{p['other_only']}" for p in q["paired"])
        rand = "/".join(f"{t:.1f}" for t in q["top1"])
        lines.append(f"{r['budget']:<7} {a['top1']:6.2f}% @ {a['gflops_mean']:.4f}   {k['top1'][0]:6.2f}% @ "
                     f"{k['gflops_mean'][0]:.4f}   {rand:>16} @ {np.mean(q['gflops_mean']):.4f}   {pairs:>34}   "
                     f"{k['ats_minus_other_at_ats_gflops'][0]:+.2f}, "
                     + "/".join(f"{v:+.2f}" for v in q["ats_minus_other_at_ats_gflops"]))
    return "\n".join(lines + ["", f"files: {os.path.dirname(doc['plot'])}"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="0.2,0.3,0.4,0.5,0.6,0.7,0.8", help="token ratios (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="random selection seeds (default: %(default)s)")
    parser.add_argument("--output", default="compare_selection", help="folder for results (default: ./%(default)s)")
    parser.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    args = parser.parse_args(argv)
    try:
        budgets = sorted({float(b) for b in args.budgets.split(",") if b.strip()})
        seeds = sorted({int(s) for s in args.seeds.split(",") if s.strip()})
    except ValueError:
        print("--budgets takes ratios like 0.5,0.7 and --seeds integers like 0,1,2", file=sys.stderr)
        return 2
    if not budgets or not seeds or any(not 0 < b <= 1 for b in budgets):
        print("--budgets takes ratios in (0, 1] and --seeds at least one integer", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    doc = compare(budgets, seeds, os.path.abspath(args.output),
                  say=(lambda s: None) if args.json else (lambda s: print(s, flush=True)))
    print(json.dumps(doc, indent=1) if args.json else table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
