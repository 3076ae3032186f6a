#!/usr/bin/env python
"""Does ATS turn its GFLOPs savings into wall-clock savings? Dense vs ATS, batch 1 and 8, in one run.

    python tools/bench_ats.py --model timesformer_8x224 --variant tube --tokens 0.7
    python tools/bench_ats.py --model deit_small_patch16_224 --official     # also time the official way

For each batch size it prints the best-of-N forward time of the dense and the ATS model, the per-sample
GFLOPs of both (ATS: from the tokens each sample really kept, fvcore convention), the padded GFLOPs the
batch actually computed, and the ratio "wall-clock saving / GFLOPs saving" (1.0 = every saved flop
saved its share of time). Inputs are random; use --weights for a trained checkpoint, whose attention
(and so the kept counts) is more content-dependent than a random model's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import videoats  # noqa: E402
from videoats.ats import apply_ats, kept_tokens  # noqa: E402
from videoats.engine.flops import dense_gflops, padded_gflops, sample_gflops  # noqa: E402


def best_time(fn, repeats: int) -> float:
    with torch.inference_mode():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(times)


def paired_times(model, ats: dict, x, repeats: int):
    """Best-of-N of the dense and the ATS forward, alternated so that both see the same machine (shared
    cores drift by tens of percent over a minute)."""
    dense, sampled = [], []
    for _ in range(repeats):
        apply_ats(model, None)
        dense.append(best_time(lambda: model(x), 1))
        apply_ats(model, ats)
        sampled.append(best_time(lambda: model(x), 1))
    return min(dense), min(sampled)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="timesformer_8x224")
    p.add_argument("--variant", default=None, help="tube | frame | joint (video), image (image models)")
    p.add_argument("--blocks", default=None, help="comma-separated ATS blocks (default: 4..11, DeiT 3..11)")
    p.add_argument("--tokens", type=float, default=0.7, help="budget: ratio <= 1 or a count (CLS included)")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--weights", default=None, help="a checkpoint to load (any format videoats knows)")
    p.add_argument("--official", action="store_true", help="also time the official ATS algorithm (DeiT, batch 1)")
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
        t_dense, t_ats = paired_times(model, ats, x, args.repeats)
        per_sample = sample_gflops(model)
        ats_g, padded_g = float(per_sample.mean()), float(padded_gflops(model))
        gflops_saving = 1 - ats_g / dense_g
        time_saving = 1 - t_ats / t_dense
        rows.append(dict(
            batch=bs, dense_s=t_dense, ats_s=t_ats, dense_gflops=dense_g, ats_gflops_mean=ats_g,
            ats_gflops_min=float(per_sample.min()), ats_gflops_max=float(per_sample.max()),
            ats_gflops_padded=padded_g, gflops_saving=gflops_saving, time_saving=time_saving,
            saving_ratio=time_saving / gflops_saving if gflops_saving > 0 else float("nan"),
            saving_ratio_vs_padded=time_saving / (1 - padded_g / dense_g) if padded_g < dense_g else float("nan"),
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

    if args.json:
        print(json.dumps(result))
        return result
    print(f"{args.model}  ATS {result['ats']}  threads={result['threads']}")
    print(f"{'batch':>5} {'dense s':>9} {'ATS s':>9} {'dense GF':>9} {'ATS GF':>9} {'padded GF':>9} "
          f"{'GF saved':>8} {'time saved':>10} {'ratio':>6}")
    for r in rows:
        print(f"{r['batch']:>5} {r['dense_s']:>9.3f} {r['ats_s']:>9.3f} {r['dense_gflops']:>9.2f} "
              f"{r['ats_gflops_mean']:>9.2f} {r['ats_gflops_padded']:>9.2f} {r['gflops_saving']:>8.1%} "
              f"{r['time_saving']:>10.1%} {r['saving_ratio']:>6.2f}")
    if "official_batch1" in result:
        o = result["official_batch1"]
        print(f"official ATS algorithm at batch 1: {o['official_s']:.3f} s, ours {o['ours_s']:.3f} s "
              f"({o['speedup']:.2f}x faster)")
    return result


if __name__ == "__main__":
    main()
