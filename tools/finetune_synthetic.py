#!/usr/bin/env python
"""The ATS benchmark recipe, in one repeatable command (about 50 minutes on 2 CPU cores, all in):

    python tools/finetune_synthetic.py [--data data/benchmark] [--out outputs/benchmark] [--json]

1. generate the synthetic benchmark (cached: reused when its synthetic.json matches);
2. train the tiny TimeSformer with the tubelet stem dense, in two stages (configs/synthetic/benchmark_train.yaml,
   then benchmark_train_more.yaml from its last weights);
3. fine-tune it with ATS from the dense weights (configs/synthetic/benchmark_ats_finetune.yaml);
4. test dense, ATS off the shelf and ATS fine-tuned with `videoats eval` (results.json each);
5. draw the three figures with `videoats figures` (figures/figures.json and PNGs).

Every step is a `videoats` command in its own process (what a user would type), so the recipe reads only
their outputs. Training runs resume (TRAIN.AUTO_RESUME), so a finished run is not trained again and an
interrupted one continues. On a CPU shared with other work, OMP_NUM_THREADS=1 is much faster than letting two
threads fight over one free core (measured: 0.1 s against 1.0 s for the same forward pass).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "synthetic")
DENSE, MORE, FINETUNE, ATS = (os.path.join(CONFIGS, f"benchmark_{n}.yaml")
                              for n in ("train", "train_more", "ats_finetune", "ats"))
DENSE_EVAL = os.path.join(CONFIGS, "benchmark.yaml")
SYNTHETIC = dict(classes=10, per_class=(400, 20, 30), frames=32, size=64, seed=0)


def videoats(*args: str) -> str:
    """Run one `videoats` command; its stdout (a JSON object with --json). Stops the recipe on failure."""
    cmd = [sys.executable, "-m", "videoats.cli", *args]
    print("$ videoats " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"finetune_synthetic: `videoats {args[0]}` failed (exit {done.returncode})")
    return done.stdout


def make_data(folder: str, workers: int) -> None:
    marker = os.path.join(folder, "synthetic.json")
    train, val, test = SYNTHETIC["per_class"]
    want = {split: n * SYNTHETIC["classes"] for split, n in zip(("train", "val", "test"), (train, val, test))}
    if os.path.isfile(marker):
        with open(marker) as f:
            have = json.load(f)
        if have.get("videos") == want and have.get("seed") == SYNTHETIC["seed"] and have.get("scenes"):
            print(f"synthetic benchmark: cached in {folder}", file=sys.stderr)
            return
    videoats("make-synthetic", folder, "--classes", str(SYNTHETIC["classes"]), "--per-class",
             ",".join(map(str, SYNTHETIC["per_class"])), "--frames", str(SYNTHETIC["frames"]),
             "--size", str(SYNTHETIC["size"]), "--seed", str(SYNTHETIC["seed"]), "--workers", str(workers))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "data", "benchmark"))
    p.add_argument("--out", default=os.path.join(ROOT, "outputs", "benchmark"))
    p.add_argument("--workers", type=int, default=1, help="DataLoader / generator processes (default: 1)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = p.parse_args(argv)
    data, out = os.path.abspath(args.data), os.path.abspath(args.out)
    started = time.perf_counter()
    make_data(data, max(args.workers, 2))
    common = ["DATA.PATH_TO_DATA_DIR", data, "DATA.NUM_WORKERS", str(args.workers), "TRAIN.AUTO_RESUME", "True"]
    first_ckpt = os.path.join(out, "dense", "checkpoints", "last.pt")
    dense_ckpt = os.path.join(out, "dense_more", "checkpoints", "best.pt")
    tuned_ckpt = os.path.join(out, "ats_finetuned", "checkpoints", "best.pt")
    videoats("train", "--config", DENSE, *common, "OUTPUT_DIR", os.path.join(out, "dense"))
    videoats("train", "--config", MORE, *common, "OUTPUT_DIR", os.path.join(out, "dense_more"),
             "TRAIN.CHECKPOINT_FILE", first_ckpt)
    videoats("train", "--config", FINETUNE, *common, "OUTPUT_DIR", os.path.join(out, "ats_finetuned"),
             "TRAIN.CHECKPOINT_FILE", dense_ckpt)

    rows = []
    for name, config, ckpt in (("dense", DENSE_EVAL, dense_ckpt), ("ats_off_the_shelf", ATS, dense_ckpt),
                               ("ats_finetuned", ATS, tuned_ckpt)):
        doc = json.loads(videoats("eval", "--config", config, "--checkpoint", ckpt, "--json", "--no-progress",
                                  "--output", os.path.join(out, "test_" + name), "DATA.PATH_TO_DATA_DIR", data))
        rows.append({"setting": name, "top1": doc["metrics"]["video"]["top1"], "top5": doc["metrics"]["video"]["top5"],
                     "videos": doc["metrics"]["video"]["num_videos"], "gflops_per_view": doc["gflops"]["per_view"],
                     "kept_tokens": doc.get("kept_tokens"), "checkpoint": ckpt})
    figures = json.loads(videoats("figures", "--config", ATS, "--dense", dense_ckpt, "--finetuned", tuned_ckpt,
                                  "--output", os.path.join(out, "figures"), "--json", "DATA.PATH_TO_DATA_DIR", data))
    for r in rows:
        r["gflops_ratio"] = r["gflops_per_view"] / rows[0]["gflops_per_view"]
        r["top1_vs_dense"] = r["top1"] - rows[0]["top1"]
    off, tuned = rows[1], rows[2]
    result = {"rows": rows, "data": data, "out": out, "seconds": round(time.perf_counter() - started, 1),
              "reversed_frames_change_prediction_pct": figures["dense"]["reversed_frames_change_prediction_pct"],
              "adaptivity": figures["adaptivity"], "equal_gflops": figures["equal_gflops"],
              "targets": {
                  "dense_top1_at_least_95": rows[0]["top1"] >= 95,
                  "finetuned_40pct_fewer_within_1pt": tuned["gflops_ratio"] <= 0.6 and tuned["top1_vs_dense"] >= -1,
                  "off_the_shelf_30pct_fewer_within_2pt": off["gflops_ratio"] <= 0.7 and off["top1_vs_dense"] >= -2}}
    print(json.dumps(result) if args.json else table(result))
    return 0


def table(result: dict) -> str:
    lines = [f"tiny TimeSformer (tubelet stem) on the synthetic benchmark, test split ({result['rows'][0]['videos']} "
             "videos, 1x1 views)", f"{'setting':<20}{'top-1 %':>9}{'vs dense':>10}{'GFLOPs/view':>13}{'of dense':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['setting']:<20}{r['top1']:>9.2f}{r['top1_vs_dense']:>+10.2f}{r['gflops_per_view']:>13.4f}"
                     f"{100 * r['gflops_ratio']:>9.1f}%")
    lines.append(f"reversing the frames changes {result['reversed_frames_change_prediction_pct']:.1f}% of the dense "
                 "model's predictions")
    lines += [f"target {k}: {'met' if v else 'NOT met'}" for k, v in result["targets"].items()]
    lines.append(f"({result['seconds']:.0f}s; figures and Spearman's rho per factor in {result['out']}/figures)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
