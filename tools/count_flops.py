#!/usr/bin/env python
"""Print the published-baseline GFLOPs table: our analytic count, optionally fvcore's, and the paper's.

    python tools/count_flops.py               # analytic only (instant)
    python tools/count_flops.py --fvcore      # also trace every model (minutes on a CPU: ViT-B on 96 frames)
    python tools/count_flops.py --fvcore --models deit_small_patch16_224 --device cuda

Numbers are per view in the fvcore convention (see videoats.flops); totals are x clips x crops.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from videoats import create_model  # noqa: E402
from videoats.flops import CONVENTION, PUBLISHED, analytic_gflops, dense_gflops  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(PUBLISHED), help="registered model names")
    parser.add_argument("--fvcore", action="store_true", help="also count with fvcore (traces each model)")
    parser.add_argument("--device", default="cpu", help="device for the fvcore trace (default: cpu)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args(argv)

    rows = []
    for name in args.models:
        # the analytic count reads shapes only (the meta device: no weights); fvcore traces real tensors
        with contextlib.nullcontext() if args.fvcore else torch.device("meta"):
            model = create_model(name).eval()
        pub = PUBLISHED.get(name, {})
        clips, crops = pub.get("views", (1, 1))
        row = dict(model=name, views=f"{clips}x{crops}", analytic=analytic_gflops(model),
                   published=pub.get("per_view"), published_total=pub.get("total"))
        row["analytic_total"] = row["analytic"] * clips * crops
        if args.fvcore:
            start = time.time()
            row["fvcore"] = dense_gflops(model.to(args.device))
            row["fvcore_seconds"] = round(time.time() - start, 1)
        if row["published"]:
            row["diff_vs_published_pct"] = 100.0 * (row["analytic"] / row["published"] - 1.0)
        rows.append(row)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        if not args.json:  # one line at a time: fvcore on the big models takes minutes each
            if len(rows) == 1:
                print(_header(args.fvcore))
            print(_line(row, args.fvcore), flush=True)
    if args.json:
        print(json.dumps(dict(convention=CONVENTION, rows=rows)))
    else:
        print(CONVENTION)
    return 0


def _header(fv: bool) -> str:
    cols = f"{'model':<24} {'views':>5} {'analytic/view':>14}"
    cols += f" {'fvcore/view':>12}" if fv else ""
    return cols + f" {'paper/view':>11} {'diff %':>7} {'analytic total':>15} {'paper total':>12}"


def _line(r: dict, fv: bool) -> str:
    def f(v, w, p=1):
        return f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"

    s = f"{r['model']:<24} {r['views']:>5} {f(r['analytic'], 14, 2)}"
    s += f" {f(r.get('fvcore'), 12, 2)}" if fv else ""
    return s + (f" {f(r['published'], 11)} {f(r.get('diff_vs_published_pct'), 7, 2)}"
                f" {f(r['analytic_total'], 15)} {f(r['published_total'], 12)}")


if __name__ == "__main__":
    sys.exit(main())
