#!/usr/bin/env python
"""Peak memory (RSS) of `infer --per-clip` on a large video: frames resized as they are decoded (what infer
does) next to the full-size path it replaced (decode the frames at full size, normalise the whole batch in
float32, then resize), on the same clip and model.

The clip is made here with PyAV (H.264, a moving pattern that encodes quickly) unless --video names one.
Each path runs in a fresh interpreter, so that its peak RSS (getrusage ru_maxrss) is its own; the two
answers are compared too (same top-1 label on every window, largest probability difference).

    python tools/bench_infer_memory.py [--size 3840x2160] [--seconds 5] [--checkpoint FILE | --model NAME]
                                       [--paths resized,full] [--video FILE] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
DEMO = os.path.join(ROOT, "videoats", "assets", "demo", "timesformer_tiny_synthetic.safetensors")


def make_clip(path: str, width: int, height: int, seconds: float, fps: int = 30) -> str:
    """A moving diagonal pattern with a bright square: cheap to encode at 4K, not a constant image."""
    import av

    y, x = np.mgrid[0:height, 0:width]
    base = ((x + y) // 8 % 256).astype(np.uint8)
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28", "g": "60"}  # a keyframe every 2 s, as cameras write
        for i in range(int(seconds * fps)):
            frame = np.stack([np.roll(base, 4 * i, axis=1), np.roll(base, 2 * i, axis=0), base], axis=-1)
            side = height // 6
            top, left = (i * 7) % (height - side), (i * 13) % (width - side)
            frame[top:top + side, left:left + side] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
from videoats.data.clips import make_views, read_clip_frames, sliding_plan
from videoats.inference.predict import predict_video, run_views
from videoats.inference.predictor import load_predictor
torch.manual_seed(0)
predictor = load_predictor(checkpoint={checkpoint!r} or None, model_name={model!r} or None,
                           opts=["DATA.DECODER", {decoder!r}, "DATA.DECODE_TIMEOUT", "3600"])  # no deadline
start = time.perf_counter()
if {path!r} == "resized":
    r = predict_video(predictor, {video!r}, per_clip=True, topk=1)
    probs = [c["topk"][0] for c in r["per_clip"]]
else:  # the full-size path: uint8 frames at full size, normalised as a float32 batch, then resized
    s = predictor.settings()
    chunks = read_clip_frames({video!r}, s, lambda n, fps: sliding_plan(s, n, fps))
    next(chunks)
    probs = []
    for _, frames in chunks:
        logits = run_views(predictor, make_views(frames, s, s.num_crops)).logits
        crops = s.num_crops
        for c in range(logits.shape[0] // crops):
            p = (logits[c * crops:(c + 1) * crops].mean(0)).softmax(-1)
            probs.append({{"index": int(p.argmax()), "score": float(p.max())}})
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"peak_rss_mb": round(peak_mb, 1), "seconds": round(time.perf_counter() - start, 2),
                  "windows": len(probs), "top1": probs}}))
"""


def run_path(path: str, video: str, checkpoint: str, model: str, decoder: str) -> dict:
    code = CHILD.format(root=ROOT, checkpoint=checkpoint, model=model, decoder=decoder, path=path, video=video)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        return {"error": "killed (out of memory?)" if killed else done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="3840x2160", help="WIDTHxHEIGHT of the generated clip (default 3840x2160)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the generated clip (default 5)")
    p.add_argument("--video", help="measure this video instead of generating one")
    p.add_argument("--checkpoint", default=DEMO, help="weights (default: the shipped demo model, 8 frames every "
                                                      "4 at 64 px)")
    p.add_argument("--model", default="", help="a registered model with random weights instead of --checkpoint")
    p.add_argument("--decoder", default="decord", choices=("decord", "pyav"))
    p.add_argument("--paths", default="resized,full", help="which paths to run: resized, full or both")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video
        if not video:
            width, height = (int(v) for v in args.size.lower().split("x"))
            video = make_clip(os.path.join(tmp, f"clip_{width}x{height}.mp4"), width, height, args.seconds)
        out = {"video": video if args.video else f"generated {args.size}, {args.seconds:g} s at 30 fps",
               "model": args.model or os.path.basename(args.checkpoint), "decoder": args.decoder}
        for path in args.paths.split(","):
            out[path] = run_path(path, video, "" if args.model else args.checkpoint, args.model, args.decoder)
    if "resized" in out and "full" in out and "top1" in out["full"] and "top1" in out["resized"]:
        a, b = out["resized"]["top1"], out["full"]["top1"]
        out["same_top1"] = [x["index"] for x in a] == [x["index"] for x in b]
        out["max_score_diff"] = max(abs(x["score"] - y["score"]) for x, y in zip(a, b))
    for path in ("resized", "full"):
        if path in out:
            out[path].pop("top1", None)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['video']}; {out['model']} ({out['decoder']})")
        for path in ("resized", "full"):
            if path in out:
                r = out[path]
                print(f"  {path:8s} " + (f"peak RSS {r['peak_rss_mb']:.0f} MB, {r['windows']} windows, "
                                         f"{r['seconds']:.1f} s" if "error" not in r else str(r["error"])))
        if "same_top1" in out:
            print(f"  same top-1 on every window: {out['same_top1']}; largest score difference "
                  f"{out['max_score_diff']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
