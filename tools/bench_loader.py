#!/usr/bin/env python
"""Clips per second of our training and test pipelines next to pytorchvideo's Kinetics loader, on the same
Kinetics-like videos (10 s, 30 fps, short side 256, H.264), in one run.

The videos are generated with the synthetic benchmark (at 256x340, 300 frames) into a temporary folder
unless --data names a folder made by an earlier run (--keep). The test pipeline is the official protocol,
8 frames x sampling rate 32, 1 clip x 3 crops at 224; a "clip" is one temporal clip with its 3 crops, on
both sides. pytorchvideo uses its decord backend and a comparable clip sampler (constant_clips_per_video
for test, random for train); its resizing and cropping is done here with torch ops, because
pytorchvideo.transforms does not import with current torchvision.

    python tools/bench_loader.py [--videos 10] [--workers 0] [--seconds 8] [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

NUM_FRAMES, SAMPLING_RATE, CROP, JITTER = 8, 32, 224, (256, 320)
MEAN, STD = (0.45,) * 3, (0.225,) * 3


def generate(folder: str, videos: int, workers: int) -> str:
    from videoats.data.synthetic import make_synthetic

    classes = min(videos, 12)
    per_class = math.ceil(videos / classes)
    make_synthetic(folder, num_classes=classes, videos_per_class={"test": per_class}, num_frames=300,
                   size=(256, 340), fps=30, seed=0, crf=23, workers=workers)
    return folder


def our_dataset(data: str, split: str, decode_threads: int):
    from videoats.config import get_cfg
    from videoats.data import build_dataset

    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = data
    cfg.DATA.NUM_FRAMES, cfg.DATA.SAMPLING_RATE = NUM_FRAMES, SAMPLING_RATE
    cfg.DATA.TRAIN_JITTER_SCALES, cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE = list(JITTER), CROP, CROP
    cfg.DATA.DECODE_THREADS = decode_threads
    cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS = 1, 3
    return build_dataset(cfg, split, annotation=os.path.join(data, "test.csv"))


def _normalize_cthw(video: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(3, 1, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1, 1)
    return (video / 255.0 - mean) / std


def _subsample(video: torch.Tensor, n: int) -> torch.Tensor:
    t = video.shape[1]
    index = torch.clamp(torch.linspace(0, t - 1, n), 0, t - 1).long()
    return torch.index_select(video, 1, index)


def _short_side(video: torch.Tensor, size: int) -> torch.Tensor:
    h, w = video.shape[-2:]
    if w < h:
        new_h, new_w = int(math.floor(h / w * size)), size
    else:
        new_h, new_w = size, int(math.floor(w / h * size))
    return F.interpolate(video, size=(new_h, new_w), mode="bilinear", align_corners=False)


def pv_test_transform(sample: dict) -> dict:
    video = _normalize_cthw(_subsample(sample["video"], NUM_FRAMES))
    video = _short_side(video, CROP)
    h, w = video.shape[-2:]
    crops = []
    for k in range(3):
        y, x = math.ceil((h - CROP) / 2), math.ceil((w - CROP) / 2)
        if w >= h:
            x = [0, x, w - CROP][k]
        else:
            y = [0, y, h - CROP][k]
        crops.append(video[..., y:y + CROP, x:x + CROP])
    sample["video"] = torch.stack(crops)
    return sample


def pv_train_transform(sample: dict) -> dict:
    video = _normalize_cthw(_subsample(sample["video"], NUM_FRAMES))
    video = _short_side(video, random.randint(*JITTER))
    h, w = video.shape[-2:]
    y, x = random.randint(0, h - CROP), random.randint(0, w - CROP)
    video = video[..., y:y + CROP, x:x + CROP]
    if random.random() < 0.5:
        video = video.flip(-1)
    sample["video"] = video
    return sample


def pv_dataset(data: str, split: str):
    from pytorchvideo.data import Kinetics, make_clip_sampler

    duration = NUM_FRAMES * SAMPLING_RATE / 30.0
    if split == "test":
        sampler = make_clip_sampler("constant_clips_per_video", duration, 1)
        order, transform = torch.utils.data.SequentialSampler, pv_test_transform
    else:
        sampler = make_clip_sampler("random", duration)
        order, transform = torch.utils.data.RandomSampler, pv_train_transform
    return Kinetics(os.path.join(data, "test"), sampler, video_sampler=order, transform=transform,
                    decode_audio=False, decoder="decord")


def measure(make_loader, seconds: float) -> dict:
    """Whole passes over the videos until `seconds` have gone by (after one warm-up pass).

    Each loader yields one clip per batch: ours (V, C, T, H, W) with V = its crops, pytorchvideo's
    sample dict with (3, C, T, H, W) for test or (C, T, H, W) for train.
    """
    for _ in make_loader():
        pass
    clips = views = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or clips == 0:
        for batch in make_loader():
            video = batch["video"]
            clips += 1
            views += video.shape[0] if video.dim() == 5 else 1
    elapsed = time.perf_counter() - started
    return {"clips_per_s": round(clips / elapsed, 2), "views_per_s": round(views / elapsed, 2),
            "clips": clips, "seconds": round(elapsed, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=10, help="videos to generate (default: 10)")
    parser.add_argument("--data", help="use videos an earlier run kept (--keep) instead of generating")
    parser.add_argument("--keep", help="generate into this folder and keep it")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for every pipeline")
    parser.add_argument("--decode-threads", type=int, default=1, help="our DATA.DECODE_THREADS (default: 1)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per pipeline")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from torch.utils.data import DataLoader

    from videoats.data import build_loader

    tmp = None
    if args.data:
        data = args.data
    else:
        data = args.keep or tempfile.mkdtemp(prefix="videoats-bench-")
        tmp = None if args.keep else data
        started = time.perf_counter()
        generate(data, args.videos, workers=max(1, os.cpu_count() or 1))
        if not args.json:
            print(f"generated {args.videos} videos (300 frames, 256x340, H.264) in "
                  f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    try:
        results = {}
        for split in ("train", "test"):
            ours = our_dataset(data, split, args.decode_threads)
            results[f"ours_{split}"] = measure(lambda: build_loader(ours, 1, num_workers=args.workers),
                                               args.seconds)

            def pv_loader(split=split):
                return DataLoader(pv_dataset(data, split), batch_size=None, num_workers=args.workers)

            results[f"pytorchvideo_{split}"] = measure(pv_loader, args.seconds)
        for split in ("train", "test"):
            results[f"speedup_{split}"] = round(results[f"ours_{split}"]["clips_per_s"]
                                                / results[f"pytorchvideo_{split}"]["clips_per_s"], 2)
        results["setup"] = {"videos": len(ours.videos), "frames": 300, "size": "256x340", "fps": 30,
                            "num_frames": NUM_FRAMES, "sampling_rate": SAMPLING_RATE, "crop": CROP,
                            "test_views": "1 clip x 3 crops", "workers": args.workers,
                            "decode_threads": args.decode_threads, "torch_threads": torch.get_num_threads(),
                            "cpus": os.cpu_count()}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{'pipeline':22s} {'clips/s':>8s} {'views/s':>8s}")
        for key in ("ours_train", "pytorchvideo_train", "ours_test", "pytorchvideo_test"):
            r = results[key]
            print(f"{key:22s} {r['clips_per_s']:8.2f} {r['views_per_s']:8.2f}")
        print(f"speedup: train {results['speedup_train']}x, test {results['speedup_test']}x "
              f"(ours / pytorchvideo clips/s; test = 1 clip x 3 crops per clip)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
