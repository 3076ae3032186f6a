#!/usr/bin/env python
"""Does ATS turn its GFLOPs savings into wall-clock savings? Dense vs ATS, batch 1 and 8, in one run.

    python tools/bench_ats.py --model timesformer_8x224 --variant tube --tokens 0.7
    python tools/bench_ats.py --model deit_small_patch16_224 --official --bound

For each batch size it prints the median forward time of the dense and the ATS model, the per-sample
GFLOPs of both (ATS: from the tokens each sample really kept, fvcore convention), the padded GFLOPs the
batch actually computed, and the ratio "wall-clock saving / GFLOPs saving" (1.0 = every saved flop saved
its share of time): the median over ATS runs each timed between two dense runs, with its range, since
the speed of shared cores drifts by tens of percent within a minute. `--official` times the official ATS algorithm at the same
kept tokens; `--bound` times the same token counts with no ATS work at all (the most that fewer tokens
can save on this machine). Inputs are random; use --weights for a trained checkpoint, whose attention
(and so the kept counts) is more content-dependent than a random model's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import videoats  # noqa: E402
from videoats import apply_ats  # noqa: E402
from videoats.ats import kept_tokens  # noqa: E402
from videoats.flops import dense_gflops, fvcore_count, padded_gflops, sample_gflops  # noqa: E402


def best_time(fn, repeats: int) -> float:
    with torch.inference_mode():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(times)


def paired_times(model, ats: dict, x, repeats: int, window: float):
    """Dense and ATS forward times, alternated D A D A ... D so that every ATS time has a dense time just
    before and just after it: the speed of these shared cores drifts by tens of percent within a minute,
    and bracketing cancels a drift that is steady over one triple. Returns (repeats + 1 dense, repeats ATS)."""
    def timed(config) -> float:  # the fastest of the forwards that fit in `window` seconds (at least one)
        apply_ats(model, config)
        times, spent = [], 0.0
        while spent < window:
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
            spent += times[-1]
        return min(times)

    with torch.inference_mode():
        timed(None), timed(ats)  # warm-up
        dense, sampled = [timed(None)], []
        for _ in range(repeats):
            sampled.append(timed(ats))
            dense.append(timed(None))
        timed(ats)  # leave the model with ATS on and its last trace to count
    return dense, sampled


def pair_ratios(dense, sampled, gflops_saving: float):
    """'time saved / GFLOPs saved' of every ATS time against the mean of the dense times around it: the
    median is the figure, the range says how far the machine let it wander."""
    ratios = sorted((1 - a / ((d0 + d1) / 2)) / gflops_saving for d0, d1, a in zip(dense, dense[1:], sampled))
    return statistics.median(ratios), ratios[0], ratios[-1]


class Truncated(torch.nn.Module):
    """A timm ViT that keeps the first n tokens before each block, n from an ATS run: the same token counts
    with no scoring, sampling or gathering at all, so what fewer tokens can save on this machine."""

    def __init__(self, vit, counts: dict):
        super().__init__()
        self.vit, self.counts = vit, counts

    def forward(self, images):
        vit = self.vit
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        for i, blk in enumerate(vit.blocks):
            if i in self.counts:
                x = blk.attn(blk.norm1(x))[:, : self.counts[i] + 1] + x[:, : self.counts[i] + 1]
                x = x + blk.mlp(blk.norm2(x))
            else:
                x = blk(x)
        return vit.head(vit.norm(x[:, 0]))


def truncation_bound(model, ats: dict, x, dense_g: float, repeats: int) -> dict:
    """Time and GFLOPs of `Truncated` at the kept counts of an ATS forward on x (batch 1), against dense."""
    apply_ats(model, ats)
    with torch.inference_mode():
        model(x)
    counts = {b: int(v[0]) for b, v in kept_tokens(model).items()}
    bound = Truncated(model, counts).eval()
    apply_ats(model, None)
    g = fvcore_count(bound, x).gflops
    with torch.inference_mode():
        dense, truncated = [best_time(lambda: model(x), 3)], []
        for _ in range(repeats):
            truncated.append(best_time(lambda: bound(x), 3))
            dense.append(best_time(lambda: model(x), 3))
    ratio, lo, hi = pair_ratios(dense, truncated, 1 - g / dense_g)
    return dict(gflops=g, dense_s=statistics.median(dense), truncated_s=statistics.median(truncated),
                saving_ratio=ratio, saving_ratio_range=[lo, hi])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="timesformer_8x224")
    p.add_argument("--variant", default=None, help="tube | frame | joint (video), image (image models)")
    p.add_argument("--blocks", default=None, help="comma-separated ATS blocks (default: 4..11, DeiT 3..11)")
    p.add_argument("--tokens", type=float, default=0.7, help="budget: ratio <= 1 or a count (CLS included)")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--repeats", type=int, default=5, help="ATS runs per batch size, each between two dense runs")
    p.add_argument("--window", type=float, default=0.5,
                   help="seconds each side of a pair repeats its forward for (the fastest one counts)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--weights", default=None, help="a checkpoint to load (any format videoats knows)")
    p.add_argument("--official", action="store_true", help="also time the official ATS algorithm (DeiT, batch 1)")
    p.add_argument("--bound", action="store_true",
                   help="also time the same token counts with no ATS work at all (timm ViTs, batch 1)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = videoats.create_model(args.model).eval()
    if args.weights:
        videoats.load_checkpoint(model, args.weights)
    video = getattr(model, "is_video", False)
    default_blocks = range(4, model.depth) if video else range(3, model.depth)
    blocks = [int(b) for b in args.blocks.split(",")] if args.blocks else list(default_blocks)
    size = model.img_size if video else model.patch_embed.img_size[0]
    shape = (3, model.num_frames, size, size) if video else (3, size, size)
    dense_g = dense_gflops(model, shape)
    ats = dict(blocks=blocks, tokens=args.tokens if args.tokens <= 1 else int(args.tokens), variant=args.variant)

    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        x = torch.randn(bs, *shape)
        dense_runs, ats_runs = paired_times(model, ats, x, args.repeats, args.window)
        t_dense, t_ats = statistics.median(dense_runs), statistics.median(ats_runs)
        per_sample = sample_gflops(model)
        ats_g, padded_g = float(per_sample.mean()), float(padded_gflops(model))
        gflops_saving = 1 - ats_g / dense_g
        ratio, ratio_lo, ratio_hi = pair_ratios(dense_runs, ats_runs, gflops_saving)
        rows.append(dict(
            batch=bs, dense_s=t_dense, ats_s=t_ats, dense_gflops=dense_g, ats_gflops_mean=ats_g,
            ats_gflops_min=float(per_sample.min()), ats_gflops_max=float(per_sample.max()),
            ats_gflops_padded=padded_g, gflops_saving=gflops_saving, time_saving=1 - t_ats / t_dense,
            saving_ratio=ratio, saving_ratio_range=[ratio_lo, ratio_hi],
            saving_ratio_vs_padded=ratio * gflops_saving / (1 - padded_g / dense_g) if padded_g < dense_g
            else float("nan"),
            kept_tokens={b: float(v.float().mean()) for b, v in kept_tokens(model).items()},
        ))
    result = dict(model=args.model, ats=dict(model.ats.__dict__), threads=torch.get_num_threads(), rows=rows)

    if args.official:
        if video:
            raise SystemExit("--official: the official ATS code exists for image ViTs (DeiT) only")
        from videoats.ats.reference import official_ats_forward

        # the official code only runs with K = N (its budget never binds), at the same kept tokens as ours
        apply_ats(model, dict(blocks=blocks, tokens=1.0))
        x = torch.randn(1, *shape)
        t_official = best_time(lambda: official_ats_forward(model, x, blocks), args.repeats)
        t_ours = best_time(lambda: model(x), args.repeats)
        result["official_batch1"] = dict(official_s=t_official, ours_s=t_ours, speedup=t_official / t_ours,
                                         kept_tokens={b: int(v[0]) for b, v in kept_tokens(model).items()})

    if args.bound:
        if video:
            raise SystemExit("--bound: the truncated reference exists for timm ViTs (DeiT) only")
        result["bound_batch1"] = truncation_bound(model, ats, torch.randn(1, *shape), dense_g, args.repeats)

    if args.json:
        print(json.dumps(result))
        return result
    print(f"{args.model}  ATS {result['ats']}  threads={result['threads']}")
    print(f"{'batch':>5} {'dense s':>9} {'ATS s':>9} {'dense GF':>9} {'ATS GF':>9} {'padded GF':>9} "
          f"{'GF saved':>8} {'time saved':>10} {'ratio':>6} {'pairs':>11}")
    for r in rows:
        lo, hi = r["saving_ratio_range"]
        print(f"{r['batch']:>5} {r['dense_s']:>9.3f} {r['ats_s']:>9.3f} {r['dense_gflops']:>9.2f} "
              f"{r['ats_gflops_mean']:>9.2f} {r['ats_gflops_padded']:>9.2f} {r['gflops_saving']:>8.1%} "
              f"{r['time_saving']:>10.1%} {r['saving_ratio']:>6.2f} {lo:>5.2f}-{hi:.2f}")
    if "official_batch1" in result:
        o = result["official_batch1"]
        print(f"official ATS algorithm at batch 1: {o['official_s']:.3f} s, ours {o['ours_s']:.3f} s "
              f"({o['speedup']:.2f}x faster)")
    if "bound_batch1" in result:
        o = result["bound_batch1"]
        print(f"same tokens, no ATS work (batch 1): {o['truncated_s']:.3f} s vs dense {o['dense_s']:.3f} s at "
              f"{o['gflops']:.2f} GFLOPs: ratio {o['saving_ratio']:.2f} ({o['saving_ratio_range'][0]:.2f}-"
              f"{o['saving_ratio_range'][1]:.2f}), the most fewer tokens can save here")
    return result


if __name__ == "__main__":
    main()
