"""`videoats plot`: GFLOPs (total over views) against top-1 for several `videoats eval` results files."""
from __future__ import annotations

from ..cli import add_common


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plot", help="GFLOPs vs top-1 of several eval results files (PNG)",
        description="Draw GFLOPs (total over views; for ATS the mean per-sample count) against video top-1, "
                    "one labelled point per results.json written by `videoats eval`.")
    p.add_argument("results", nargs="+", metavar="RESULTS_JSON", help="results.json files")
    p.add_argument("--output", default="gflops_vs_top1.png", metavar="PNG", help="(default: %(default)s)")
    p.add_argument("--title", default="", help="figure title")
    add_common(p)
    p.set_defaults(func=run, human=fmt)


def run(args) -> dict:
    from ..engine.plots import load_results, plot_gflops_vs_top1

    return plot_gflops_vs_top1(load_results(args.results), args.output, title=args.title)


def fmt(result: dict) -> str:
    lines = [f"{'setting':<52}{'GFLOPs':>10}{'top-1':>9}"]
    for p in result["points"]:
        lines.append(f"{p['label'][:51]:<52}{p['gflops']:>10,.1f}{p['top1']:>8.2f}%")
    for s in result["skipped"]:
        lines.append(f"skipped (no GFLOPs or top-1): {s}")
    lines.append(f"wrote {result['output']}")
    return "\n".join(lines)
