#!/usr/bin/env python
"""The ATS fine-tuning experiment on the synthetic benchmark, in one repeatable command:

    python tools/finetune_synthetic.py [--data data/synthetic_finetune] [--out outputs/finetune_synthetic] [--json]

1. generate the synthetic motion benchmark (cached: reused when its synthetic.json matches);
2. train a tiny TimeSformer dense (configs/synthetic/train_timesformer_tiny.yaml) and test it;
3. switch ATS on, off the shelf (no training), and test;
4. fine-tune with ATS from the dense weights (configs/synthetic/train_timesformer_tiny_ats_tube.yaml) and test;
5. print top-1 and mean GFLOPs per clip (from each clip's kept tokens) for the three.

Training runs auto-resume, so a finished run is not trained again and an interrupted one continues.
Everything is seeded: the same command on the same machine gives the same numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DENSE = os.path.join(ROOT, "configs", "synthetic", "train_timesformer_tiny.yaml")
ATS = os.path.join(ROOT, "configs", "synthetic", "train_timesformer_tiny_ats_tube.yaml")
SYNTHETIC = dict(num_classes=10, videos_per_class=(50, 10, 20), num_frames=32, size=64, seed=0)


def make_data(folder: str, workers: int, say) -> str:
    from videoats.data.synthetic import make_synthetic

    marker = os.path.join(folder, "synthetic.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            have = json.load(f)
        counts = {"train": SYNTHETIC["videos_per_class"][0] * SYNTHETIC["num_classes"],
                  "val": SYNTHETIC["videos_per_class"][1] * SYNTHETIC["num_classes"],
                  "test": SYNTHETIC["videos_per_class"][2] * SYNTHETIC["num_classes"]}
        if have.get("videos") == counts and have.get("seed") == SYNTHETIC["seed"]:
            say(f"synthetic benchmark: cached in {folder}")
            return folder
    say(f"synthetic benchmark: generating {folder} ...")
    summary = make_synthetic(folder, workers=workers, **SYNTHETIC)
    say(f"synthetic benchmark: {summary['videos']} videos in {summary['seconds']:.0f}s")
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "data", "synthetic_finetune"))
    p.add_argument("--out", default=os.path.join(ROOT, "outputs", "finetune_synthetic"))
    p.add_argument("--workers", type=int, default=2, help="DataLoader / generator processes")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = p.parse_args(argv)

    import torch

    from videoats.config import load_config
    from videoats.engine.evaluate import evaluate
    from videoats.engine.train import train

    def say(text):
        print(text, file=sys.stderr, flush=True)

    started = time.perf_counter()
    data = make_data(args.data, args.workers, say)
    common = ["DATA.PATH_TO_DATA_DIR", data, "DATA.NUM_WORKERS", str(args.workers)]

    dense_cfg = load_config(DENSE, common + ["OUTPUT_DIR", os.path.join(args.out, "dense")])
    say("== dense training")
    dense = train(dense_cfg, progress=not args.json, echo=say)
    dense_ckpt = dense["best"]["checkpoint"] or dense["last_checkpoint"]

    ats_cfg = load_config(ATS, common + ["OUTPUT_DIR", os.path.join(args.out, "ats_finetuned"),
                                         "TRAIN.CHECKPOINT_FILE", dense_ckpt])

    def test(cfg, ckpt, name):
        doc = evaluate(cfg, checkpoint=ckpt, output_dir=os.path.join(args.out, "test_" + name), progress=False)
        g = doc["gflops"]
        return {"setting": name, "top1": doc["metrics"]["video"]["top1"], "top5": doc["metrics"]["video"]["top5"],
                "videos": doc["metrics"]["video"]["num_videos"], "gflops_per_clip": g["per_view"],
                "dense_gflops_per_clip": g["dense_per_view"], "kept_tokens": doc.get("kept_tokens"),
                "checkpoint": ckpt}

    rows = [test(dense_cfg, dense_ckpt, "dense")]
    rows.append(test(ats_cfg, dense_ckpt, "ats_off_the_shelf"))
    say("== ATS fine-tuning from the dense weights")
    tuned = train(ats_cfg, progress=not args.json, echo=say)
    rows.append(test(ats_cfg, tuned["best"]["checkpoint"] or tuned["last_checkpoint"], "ats_finetuned"))

    dense_row = rows[0]
    for r in rows:
        r["gflops_ratio"] = r["gflops_per_clip"] / dense_row["gflops_per_clip"]
        r["top1_vs_dense"] = r["top1"] - dense_row["top1"]
    ft = rows[-1]
    result = {"rows": rows, "ats": {k.lower(): v for k, v in ats_cfg.ATS.items()}, "data": data,
              "target_met": bool(ft["top1_vs_dense"] >= -1.0 and ft["gflops_ratio"] <= 0.5),
              "seconds": round(time.perf_counter() - started, 1), "torch_threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))
    return 0


def table(result: dict) -> str:
    ats = result["ats"]
    lines = [f"tiny TimeSformer on the synthetic benchmark, test split ({result['rows'][0]['videos']} videos, "
             f"1 clip x 1 crop); ATS {ats['variant']} blocks {ats['blocks']} tokens {ats['tokens']}",
             f"{'setting':<20}{'top-1 %':>9}{'vs dense':>10}{'GFLOPs/clip':>13}{'of dense':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['setting']:<20}{r['top1']:>9.2f}{r['top1_vs_dense']:>+10.2f}{r['gflops_per_clip']:>13.5f}"
                     f"{100 * r['gflops_ratio']:>9.1f}%")
    lines.append(f"target (fine-tuned within 1 point of dense at <= 50% GFLOPs): "
                 f"{'met' if result['target_met'] else 'NOT met'}  ({result['seconds']:.0f}s)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
