#!/usr/bin/env python
"""Does ATS turn its GFLOPs savings into wall-clock savings? Dense vs ATS per batch size, on CPU or GPU.

    python tools/bench_ats.py --model timesformer_8x224 --variant tube --tokens 0.7
    python tools/bench_ats.py --model timesformer_8x224 --device cuda --dtype bf16 --compile --mode static \
        --batch-sizes 1,8,32
    python tools/bench_ats.py --model timesformer_8x224 --device cuda --dtype bf16 --sampler compiled
    python tools/bench_ats.py --model deit_small_patch16_224 --official --bound

For each batch size it prints the forward time of the dense model (eager, and compiled with --compile), of
the ATS model (and compiled ATS with --compile: one graph in `--mode static`), the per-sample GFLOPs of both
(ATS: from the tokens each sample really kept, fvcore convention), the padded GFLOPs the batch actually
computed, the time saving against each dense figure, and what the host pays per forward: device-to-host
reads and aten ops (CPU), or reads and CUDA kernel launches (GPU).

Timing: on the CPU every ATS run is bracketed by two dense runs and the ratio "time saved / GFLOPs saved"
(1.0 = every saved flop saved its share of time) is the median over those pairs, with its range, since the
speed of shared cores drifts by tens of percent within a minute. On a GPU each figure is the median of
`--repeats` forwards timed with CUDA events after `--warmup` forwards. `--official` times the official ATS
algorithm at the same kept tokens (CPU); `--bound` the same token counts with no ATS work at all. Inputs
are random; use --weights for a trained checkpoint, whose attention (and so the kept counts) is more
content-dependent than a random model's.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import videoats  # noqa: E402
from videoats import apply_ats  # noqa: E402
from videoats.ats import kept_tokens  # noqa: E402
from videoats.ats.core import SELECTIONS  # noqa: E402
from videoats.flops import dense_gflops, fvcore_count, padded_gflops, sample_gflops  # noqa: E402
from videoats.profiling import count_ops, profile_ops  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def best_time(fn, repeats: int) -> float:
    with torch.inference_mode():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(times)


def paired_times(dense_fn, ats_fn, repeats: int, window: float):
    """Dense and ATS forward times, alternated D A D A ... D so that every ATS time has a dense time just
    before and just after it: the speed of these shared cores drifts by tens of percent within a minute,
    and bracketing cancels a drift that is steady over one triple. Returns (repeats + 1 dense, repeats ATS)."""
    def timed(fn) -> float:  # the fastest of the forwards that fit in `window` seconds (at least one)
        times, spent = [], 0.0
        while spent < window:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
            spent += times[-1]
        return min(times)

    with torch.inference_mode():
        timed(dense_fn), timed(ats_fn)  # warm-up
        dense, sampled = [timed(dense_fn)], []
        for _ in range(repeats):
            sampled.append(timed(ats_fn))
            dense.append(timed(dense_fn))
        ats_fn()  # leave the ATS model with its last trace to count
    return dense, sampled


def cuda_time(fn, repeats: int, warmup: int) -> float:
    """Median seconds of `repeats` forwards, each timed with CUDA events, after `warmup` forwards."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def host_costs(fn, device: torch.device, profiled: bool = False, reads: bool = True) -> dict:
    """What the host pays for one forward: aten ops and device-to-host reads (a dispatch mode, `count_ops`).
    Compiled code runs eagerly under a dispatch mode, so its ops (`profiled`: a compiled model, or an eager
    model with the compiled sampler) and a GPU's kernels come from the profiler (`profile_ops`); a model
    compiled whole reports no reads (its graph breaks are where it reads)."""
    with torch.inference_mode():
        fn()
        out = {}
        if reads or not profiled:
            with count_ops() as count:
                fn()
            out["aten_ops"] = count.ops
            if reads:
                out["host_reads"] = count.host_reads
        if profiled or device.type == "cuda":
            profiled_count = profile_ops(fn)
            if profiled:
                out["aten_ops"] = profiled_count.ops
            if device.type == "cuda":
                out["kernels"] = profiled_count.by_op["cuda_kernels"]
    return out


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


def truncation_bound(model, ats: dict, x, dense_g: float, repeats: int) -> dict:  # CPU, batch 1
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
    p.add_argument("--tokens", default="0.7",
                   help="budget: ratio <= 1 or a count (CLS included); one, or one per block, comma-separated")
    p.add_argument("--selection", choices=SELECTIONS, default="inverse_transform",
                   help="how the blocks reduce tokens: ATS, top_k, random, evit or tome")
    p.add_argument("--mode", choices=("trim", "static"), default="trim",
                   help="pruned layout: trim (pad to the batch's largest count, one device read per stage) or "
                        "static (widths from the budget: no device read, compiles as one graph)")
    p.add_argument("--sampler", choices=("eager", "compiled"), default="eager",
                   help="ATS stages as eager ops or each as one torch.compile'd graph (fewer kernels per stage)")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="autocast dtype (fp32: none)")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile'd dense and ATS models (ATS as one graph in static mode)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode: default, reduce-overhead (CUDA graphs: no launch cost per kernel; "
                        "static mode only for ATS), max-autotune")
    p.add_argument("--repeats", type=int, default=5,
                   help="CPU: ATS runs per batch size, each between two dense runs; GPU: timed forwards")
    p.add_argument("--warmup", type=int, default=3, help="GPU: forwards before timing")
    p.add_argument("--window", type=float, default=0.5,
                   help="CPU: seconds each side of a pair repeats its forward for (the fastest one counts)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--weights", default=None, help="a checkpoint to load (any format videoats knows)")
    p.add_argument("--official", action="store_true", help="also time the official ATS algorithm (DeiT, batch 1)")
    p.add_argument("--bound", action="store_true",
                   help="also time the same token counts with no ATS work at all (timm ViTs, batch 1)")
    p.add_argument("--counts-only", action="store_true",
                   help="no timing: GFLOPs, kept tokens, host reads and ops only (what a busy CPU can still measure)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
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
    tokens = [float(t) if float(t) <= 1 else int(float(t)) for t in args.tokens.split(",")]
    ats = dict(blocks=blocks, tokens=tokens[0] if len(tokens) == 1 else tokens, variant=args.variant,
               mode=args.mode, sampler=args.sampler, selection=args.selection)
    dense_model = model.to(device)
    ats_model = apply_ats(copy.deepcopy(model), ats)
    dtype = DTYPES[args.dtype]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext

    def runner(net):
        def run():
            with autocast():
                return net(x)
        return run

    compiled = {}
    if args.compile:
        compiled["dense"] = torch.compile(dense_model, mode=args.compile_mode)
        compiled["ats"] = torch.compile(ats_model, mode=args.compile_mode, fullgraph=args.mode == "static")

    # ops the profiler must count: compiled models, and the eager ATS model when its stages are compiled
    profiled = {"dense_compiled", "ats_compiled"} | ({"ats"} if args.sampler == "compiled" else set())
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        x = torch.randn(bs, *shape, device=device)
        fns = {"dense": runner(dense_model), "ats": runner(ats_model)}
        fns.update({f"{k}_compiled": runner(net) for k, net in compiled.items()})
        if args.counts_only:
            times, spread = {}, None
            fns["ats"]()
        elif device.type == "cuda":
            times = {k: cuda_time(fn, args.repeats, args.warmup) for k, fn in fns.items()}
            fns["ats"]()  # the trace to count comes from the eager ATS model
            spread = None
        else:
            dense_runs, ats_runs = paired_times(fns["dense"], fns["ats"], args.repeats, args.window)
            times = dict(dense=statistics.median(dense_runs), ats=statistics.median(ats_runs))
            for k in compiled:
                with torch.inference_mode():
                    times[f"{k}_compiled"] = best_time(fns[f"{k}_compiled"], args.repeats)
            fns["ats"]()
            spread = (dense_runs, ats_runs)
        per_sample = sample_gflops(ats_model).cpu()
        ats_g, padded_g = float(per_sample.mean()), float(padded_gflops(ats_model))
        gflops_saving = 1 - ats_g / dense_g
        row = dict(batch=bs, times_s=times, dense_gflops=dense_g, ats_gflops_mean=ats_g,
                   ats_gflops_min=float(per_sample.min()), ats_gflops_max=float(per_sample.max()),
                   ats_gflops_padded=padded_g, gflops_saving=gflops_saving,
                   time_saving={k: 1 - times[k.replace("dense", "ats")] / times[k]
                                for k in ("dense", "dense_compiled") if k in times},
                   kept_tokens={b: float(v.float().mean()) for b, v in kept_tokens(ats_model).items()},
                   host={k: host_costs(fn, device, profiled=k in profiled, reads="compiled" not in k)
                         for k, fn in fns.items()},
                   stages=len(blocks))
        if spread is not None:
            ratio, lo, hi = pair_ratios(*spread, gflops_saving)
            row.update(saving_ratio=ratio, saving_ratio_range=[lo, hi])
        rows.append(row)
    result = dict(model=args.model, ats=dict(ats_model.ats.__dict__), device=str(device), dtype=args.dtype,
                  threads=torch.get_num_threads(), rows=rows)
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)

    if args.official:
        if video or device.type != "cpu":
            raise SystemExit("--official: the official ATS code exists for image ViTs (DeiT) only, timed on the CPU")
        from videoats.ats.reference import official_ats_forward

        # the official code only runs with K = N (its budget never binds), at the same kept tokens as ours
        apply_ats(model, dict(blocks=blocks, tokens=1.0))
        x = torch.randn(1, *shape)
        t_official = best_time(lambda: official_ats_forward(model, x, blocks), args.repeats)
        t_ours = best_time(lambda: model(x), args.repeats)
        result["official_batch1"] = dict(official_s=t_official, ours_s=t_ours, speedup=t_official / t_ours,
                                         kept_tokens={b: int(v[0]) for b, v in kept_tokens(model).items()})
        apply_ats(model, None)

    if args.bound:
        if video or device.type != "cpu":
            raise SystemExit("--bound: the truncated reference exists for timm ViTs (DeiT) only, on the CPU")
        result["bound_batch1"] = truncation_bound(model, ats, torch.randn(1, *shape), dense_g, args.repeats)

    if args.json:
        print(json.dumps(result))
        return result
    print_table(result)
    return result


def print_table(result: dict) -> None:
    ms = 1e3
    print(f"{result['model']}  ATS {result['ats']}  {result['device']} {result.get('device_name', '')} "
          f"{result['dtype']}  threads={result['threads']}")
    work = "kernels" if result["device"].startswith("cuda") else "aten_ops"
    print(f"{'batch':>5} {'dense ms':>9} {'dense c.':>9} {'ATS ms':>9} {'ATS c.':>9} {'dense GF':>9} {'ATS GF':>8} "
          f"{'padded':>8} {'GF saved':>8} {'t saved':>8} {'vs c.':>7} {'ratio':>6} {'reads':>7} {work:>11} "
          f"{work + ' c.':>13}")
    for r in result["rows"]:
        t, h = r["times_s"], r["host"]
        col = lambda k: f"{t[k] * ms:>9.2f}" if k in t else f"{'-':>9}"  # noqa: E731
        vs_c, t_saved = r["time_saving"].get("dense_compiled"), r["time_saving"].get("dense")
        print(f"{r['batch']:>5} {col('dense')} {col('dense_compiled')} {col('ats')} {col('ats_compiled')} "
              f"{r['dense_gflops']:>9.2f} {r['ats_gflops_mean']:>8.2f} {r['ats_gflops_padded']:>8.2f} "
              f"{r['gflops_saving']:>8.1%} {(f'{t_saved:.1%}' if t_saved is not None else '-'):>8} "
              f"{(f'{vs_c:.1%}' if vs_c is not None else '-'):>7} {r.get('saving_ratio', float('nan')):>6.2f} "
              f"{h['dense']['host_reads']:>3}/{h['ats']['host_reads']:<3} "
              f"{h['dense'][work]:>5}/{h['ats'][work]:<5} "
              + (f"{h['dense_compiled'][work]:>6}/{h['ats_compiled'][work]:<6}" if "ats_compiled" in h
                 else f"{'-':>13}"))
    print("t saved: ATS eager against dense eager; vs c.: compiled ATS against compiled dense; ratio: CPU paired "
          "time saved / GFLOPs saved; reads, ops / kernels: dense/ATS per forward (eager; 'c.': compiled)")
    if "official_batch1" in result:
        o = result["official_batch1"]
        print(f"official ATS algorithm at batch 1: {o['official_s']:.3f} s, ours {o['ours_s']:.3f} s "
              f"({o['speedup']:.2f}x faster)")
    if "bound_batch1" in result:
        o = result["bound_batch1"]
        print(f"same tokens, no ATS work (batch 1): {o['truncated_s']:.3f} s vs dense {o['dense_s']:.3f} s at "
              f"{o['gflops']:.2f} GFLOPs: ratio {o['saving_ratio']:.2f} ({o['saving_ratio_range'][0]:.2f}-"
              f"{o['saving_ratio_range'][1]:.2f}), the most fewer tokens can save here")


if __name__ == "__main__":
    main()
