"""`videoats plot`: GFLOPs (total over views) against top-1 for several `videoats eval` results files."""
from __future__ import annotations

import sys

from ..evaluation.plots import load_results, plot_gflops_vs_top1
from ..summary import number_text as gflops_text
from ..paths import declare_outputs
from ._args import add_common


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plot", help="GFLOPs vs top-1 of several eval results files (PNG)",
        description="Draw GFLOPs (total over views; for ATS the mean per-sample count) against video top-1, "
                    "one labelled point per results.json written by `videoats eval`.")
    p.add_argument("results", nargs="+", metavar="RESULTS_JSON", help="results.json files")
    p.add_argument("--output", default="gflops_vs_top1.png", metavar="PNG", help="(default: %(default)s)")
    p.add_argument("--title", default="", help="figure title")
    add_common(p)
    declare_outputs(p, output="file")
    p.set_defaults(func=run, human=fmt)


def run(args) -> dict:
    result = plot_gflops_vs_top1(load_results(args.results), args.output, title=args.title)
    for line in result["warnings"]:
        print(f"videoats plot: warning: {line}", file=sys.stderr)
    return result


def fmt(result: dict) -> str:
    """A numbered table matching the figure's numbers; GFLOPs with significant digits, so that a tiny
    model's 0.0401 is not printed as 0.0."""
    width = max(len(p["label"]) for p in result["points"]) + 6
    lines = [f"{'setting':<{width}}{'GFLOPs':>10}{'top-1':>9}"]
    for i, p in enumerate(result["points"], 1):
        lines.append(f"{f'{i}. ' + p['label']:<{width}}{gflops_text(p['gflops']):>10}{p['top1']:>8.2f}%")
    for s in result["skipped"]:
        lines.append(f"skipped (no GFLOPs or top-1): {s}")
    lines.append(f"wrote {result['output']}")
    return "\n".join(lines)
