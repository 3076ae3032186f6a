"""Run a model on the user's own videos: whole-video predictions over the test views, or one per clip.

Why it is built this way:
- A `Predictor` is made once (config, checkpoint metadata, weights, label names) and then asked about any
  number of videos, so that `infer`, `visualize` and the demo share one way of turning flags into a model.
- Frames are decoded, sampled and cropped with `videoats.data` (the same decoder fallbacks, timeouts and
  protocol frame indices as `eval`), so a video gets the same views here as in an evaluation.
- A bad video never stops the others: it comes back as a `DecodeFailure` whose reason is one of REASONS,
  and the caller lists it next to the answers for the good ones.
- The scores shown are probabilities whose order is the order of the configured aggregation
  (TEST.AGGREGATION), so that the top-k a user reads is the top-k `eval` scores.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import VideoATSError
from .predictor import Predictor

REASONS = ("missing", "unreadable", "not_a_video", "corrupt", "zero_frames", "timeout")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
                    ".ts", ".mts", ".ogv", ".gif")
MAX_FRAMES_PER_READ = 256  # decode long per-clip runs in pieces, so memory does not grow with the video
MAX_WINDOWS = 100_000

def expand_inputs(paths: Iterable[str]) -> Tuple[List[str], List[str]]:
    """(videos to try, files skipped) in the order given; a folder gives its videos, recursively, sorted.

    Inside a folder only files with a video extension are tried (a dataset folder also holds CSVs and label
    lists that are not worth an error each); a file named on the command line is always tried, so that a
    mislabelled one is reported, not ignored. Hidden files (e.g. macOS `._x.mp4`) are skipped.
    """
    videos, skipped, seen = [], [], set()

    def add(path):
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            videos.append(path)

    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS):
                        add(full)
                    else:
                        skipped.append(full)
        else:
            add(path)
    return videos, skipped


# ---------------------------------------------------------------------------------------------- decoding

# Leading bytes of the containers a video comes in; a file without one that PyAV cannot open either is
# "not a video" rather than a damaged video.
_SIGNATURES = ((4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"), (4, b"skip"),
               (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"FLV"), (0, b"OggS"), (0, b"\x00\x00\x01\xba"),
               (0, b"\x00\x00\x01\xb3"), (0, b"\x30\x26\xb2\x75"), (0, b"GIF8"))


def _has_video_signature(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if len(head) >= 1 and head[0] == 0x47 and os.path.getsize(path) >= 189:  # MPEG-TS sync bytes
        with open(path, "rb") as f:
            f.seek(188)
            if f.read(1) == b"\x47":
                return True
    return any(head[at:at + len(sig)] == sig for at, sig in _SIGNATURES)


def _container_kind(path: str, timeout: float) -> str:
    """'video', 'no_video_stream' or 'unreadable', from opening the container only."""
    from ..data.decoding import DecodeFailure, run_with_timeout

    def probe():
        import av

        try:
            with av.open(path) as container:
                return "video" if container.streams.video else "no_video_stream"
        except Exception:
            return "unreadable"

    try:
        return run_with_timeout(probe, timeout)
    except DecodeFailure:
        return "unreadable"


def classify_failure(path: str, failure, timeout: float = 10.0):
    """The data module's failure, with 'not_a_video' split off from 'corrupt' / 'zero_frames'.

    A user pointing `infer` at a folder wants to know whether a file is a broken video (worth
    re-downloading) or was never a video; the decoders say both as "cannot open".
    """
    from ..data.decoding import DecodeFailure

    if failure.reason not in ("corrupt", "zero_frames") or not os.path.isfile(path) or os.path.getsize(path) == 0:
        return failure
    if _has_video_signature(path):  # a video container, damaged or empty: the decoder's reason stands
        return failure
    kind = _container_kind(path, timeout)
    if kind == "video":
        return failure
    if kind == "no_video_stream":
        return DecodeFailure("not_a_video", "the file has no video stream")
    with open(path, "rb") as f:
        head = f.read(8)
    return DecodeFailure("not_a_video", f"not a video container (it starts with {head!r})")


def _effective_fps(fps: float, target_fps: float) -> float:
    return fps if fps and math.isfinite(fps) and fps > 0 else float(target_fps)


@dataclass
class ClipPlan:
    """Where each clip of a video starts and which frames it takes (decided once the length is known)."""

    num_frames: int
    fps: float
    span: float
    starts: List[float]
    indices: np.ndarray  # (clips, T) int64


def protocol_plan(settings, num_frames: int, fps: float) -> ClipPlan:
    """The test views' clips: `num_clips` placed as TEST.CLIP_SAMPLING says (what `eval` decodes)."""
    from ..data.sampling import clip_span, clip_start, frame_indices

    s = settings
    span = clip_span(s.num_frames, s.sampling_rate, fps, s.target_fps)
    starts = [clip_start(num_frames, span, k, s.num_clips, s.clip_sampling) for k in range(s.num_clips)]
    idx = np.stack([frame_indices(st, span, s.num_frames, num_frames) for st in starts])
    return ClipPlan(num_frames, fps, span, starts, idx)


def sliding_plan(settings, num_frames: int, fps: float, stride_s: Optional[float] = None) -> ClipPlan:
    """Clips every `stride_s` seconds (default: one clip length, so they tile the video), plus one clip
    ending at the last frame when the stride leaves the end uncovered."""
    from ..data.sampling import clip_span, frame_indices

    s = settings
    span = clip_span(s.num_frames, s.sampling_rate, fps, s.target_fps)
    step = span if not stride_s else float(stride_s) * _effective_fps(fps, s.target_fps)
    if step <= 0:
        raise VideoATSError(f"--stride {stride_s}: give a positive number of seconds")
    last = num_frames - span
    starts = [0.0]
    if last > 0:
        count = int(math.floor(last / step + 1e-9)) + 1
        if count > MAX_WINDOWS:
            raise VideoATSError(f"--stride {stride_s} s gives {count} clips; use a longer stride")
        starts = [k * step for k in range(count)]
        if starts[-1] < last - 1e-6:
            starts.append(float(last))
    idx = np.stack([frame_indices(st, span, s.num_frames, num_frames) for st in starts])
    return ClipPlan(num_frames, fps, span, starts, idx)


def read_clip_frames(path: str, settings, planner: Callable[[int, float], ClipPlan]):
    """Yield (first clip index, frames uint8 (n, T, H, W, 3)) for the clips `planner` lays out, reading
    at most MAX_FRAMES_PER_READ frames at a time; the plan is available as the first item (None, plan).

    Raises DecodeFailure (reasons in REASONS) before anything is yielded when the video is unusable.
    """
    from ..data.decoding import DecodeFailure, read_frames, refuse_truncated

    s = settings
    box: Dict[str, ClipPlan] = {}
    per_read = max(1, MAX_FRAMES_PER_READ // max(1, s.num_frames))

    def read(first: int):
        def pick(video_len: int, fps: float) -> np.ndarray:
            if "plan" not in box:
                box["plan"] = planner(int(video_len), float(fps))
            return box["plan"].indices[first:first + per_read].reshape(-1)

        frames, _, meta = read_frames(path, pick, backend=s.decoder, short_side=s.decode_short_side,
                                      timeout=s.decode_timeout, num_threads=s.decode_threads)
        return frames, refuse_truncated(meta)

    try:
        frames, meta = read(0)
    except DecodeFailure as e:
        raise classify_failure(path, e, min(float(s.decode_timeout or 10.0), 10.0)) from None
    plan = box["plan"]
    plan.fps = float(meta.fps or 0.0)
    yield None, plan
    n_clips = len(plan.starts)
    first = 0
    while True:
        count = min(per_read, n_clips - first)
        yield first, frames.reshape(count, s.num_frames, *frames.shape[1:])
        first += count
        if first >= n_clips:
            return
        frames, _ = read(first)


def make_views(frames: np.ndarray, settings, num_crops: int) -> Tensor:
    """uint8 (n, T, H, W, 3) clips -> normalised views (n * num_crops, 3, T, S, S), clip-major, in the
    protocol's order (normalise, resize the short side, crop) as the test dataset does it."""
    from ..data.sampling import normalize, spatial_crops

    s = settings
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 4, 1, 2, 3)  # (n, 3, T, H, W)
    video = normalize(video, s.mean, s.std, channel_dim=1)
    crops = spatial_crops(video, s.test_crop_size, num_crops)  # (S, n, 3, T, s, s)
    return crops.transpose(0, 1).reshape(-1, *crops.shape[2:]).contiguous()


def view_pixels(view: Tensor, settings) -> np.ndarray:
    """A normalised view (3, T, S, S) back to uint8 frames (T, S, S, 3): the pixels the model saw."""
    mean = torch.tensor(settings.mean, dtype=torch.float32).view(3, 1, 1, 1)
    std = torch.tensor(settings.std, dtype=torch.float32).view(3, 1, 1, 1)
    x = (view.detach().float().cpu() * std + mean) * 255.0
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()


# ---------------------------------------------------------------------------------------------- forward


@dataclass
class ViewOutputs:
    logits: Tensor  # (V, K) float32
    gflops: Optional[Tensor]  # (V,) float64
    kept: Dict[int, Tensor]  # block -> (V,) long
    masks: Dict[int, Tensor] = field(default_factory=dict)  # block -> (V, T, L0) bool, when asked for


def run_views(predictor: Predictor, views: Tensor, keep_masks: bool = False) -> ViewOutputs:
    """Forward views in chunks of TEST.BATCH_SIZE and collect logits, per-view GFLOPs and kept tokens."""
    from ..ats import kept_tokens, token_masks

    try:
        from . import flops
    except ImportError:  # pragma: no cover - the FLOPs module is optional to inference
        flops = None
    model, device = predictor.model, predictor.device
    batch = max(1, int(predictor.cfg.TEST.BATCH_SIZE))
    logits, gflops, kept, masks = [], [], {}, {}
    with torch.inference_mode():
        for i in range(0, views.shape[0], batch):
            x = views[i:i + batch].to(device)
            logits.append(model(x).float().cpu())
            if flops is not None:
                gflops.append(flops.sample_gflops(model, x).cpu())
            if predictor.ats_enabled:
                for b, k in kept_tokens(model).items():
                    kept.setdefault(int(b), []).append(k.reshape(-1).long().cpu())
                if keep_masks:
                    for b, m in token_masks(model).items():
                        masks.setdefault(int(b), []).append(m.cpu())
    return ViewOutputs(torch.cat(logits), torch.cat(gflops) if gflops else None,
                       {b: torch.cat(v) for b, v in kept.items()}, {b: torch.cat(v) for b, v in masks.items()})


def scores_and_probs(view_logits: Tensor, method: str) -> Tuple[Tensor, Tensor]:
    """(aggregated scores, probabilities in the same order) of one video's views.

    Probabilities: softmax of the mean logit for sum_logits (the sum's order, without the sharpening a
    sum of V views would give), softmax of the max for max_logits, the mean softmax itself otherwise.
    """
    from .metrics import aggregate

    agg = aggregate(view_logits, method)
    if method == "sum_logits":
        probs = (agg / max(1, view_logits.shape[0])).softmax(dim=-1)
    elif method == "max_logits":
        probs = agg.softmax(dim=-1)
    else:
        probs = agg
    return agg, probs


def top_k(agg: Tensor, probs: Tensor, label_names: Sequence[str], k: int) -> List[dict]:
    """The k best classes, ties to the lower index (as `eval` ranks them)."""
    k = max(1, min(int(k), agg.shape[-1]))
    order = torch.sort(agg, descending=True, stable=True).indices[:k]
    return [{"index": int(i), "label": label_names[i] if i < len(label_names) else str(int(i)),
             "score": round(float(probs[i]), 6), "aggregate": round(float(agg[i]), 6)} for i in order.tolist()]


def _stats(values: Tensor) -> dict:
    v = values.double()
    return {"mean": round(float(v.mean()), 6), "min": round(float(v.min()), 6), "max": round(float(v.max()), 6)}


def _gflops_summary(gflops: Optional[Tensor]) -> Optional[dict]:
    if gflops is None or gflops.numel() == 0:
        return None
    return {"per_view": round(float(gflops.mean()), 6), "per_view_min": round(float(gflops.min()), 6),
            "per_view_max": round(float(gflops.max()), 6), "total": round(float(gflops.sum()), 6),
            "views": int(gflops.numel())}


def _kept_summary(kept: Dict[int, Tensor], patch_tokens: int) -> List[dict]:
    out = []
    for b in sorted(kept):
        s = _stats(kept[b])
        out.append({"block": int(b), **s, "fraction": round(s["mean"] / max(1, patch_tokens), 6)})
    return out


def patch_tokens(predictor: Predictor) -> int:
    _, t, h, w = predictor.view_shape()
    p = predictor.patch_size
    return int(t * (h // p) * (w // p))


def dense_gflops_per_view(predictor: Predictor) -> Optional[float]:
    """The dense model's per-view count (analytic, no tracing), to set beside what ATS spent."""
    try:
        from .flops import analytic_gflops
    except ImportError:  # pragma: no cover
        return None
    return round(float(analytic_gflops(predictor.model, predictor.view_shape())), 6)


# ---------------------------------------------------------------------------------------------- per video


def predict_video(predictor: Predictor, path: str, topk: int = 5, per_clip: bool = False,
                  stride: Optional[float] = None) -> dict:
    """Top-k over the test views of one video (or, `per_clip`, of every sliding clip too).

    Raises DecodeFailure for a video that cannot be used; everything else about the video is in the dict.
    """
    started = time.perf_counter()
    s = predictor.settings()
    crops = int(predictor.cfg.TEST.NUM_SPATIAL_CROPS)
    method = str(predictor.cfg.TEST.AGGREGATION)
    if per_clip:
        planner = lambda n, fps: sliding_plan(s, n, fps, stride)  # noqa: E731
    else:
        planner = lambda n, fps: protocol_plan(s, n, fps)  # noqa: E731
    chunks = read_clip_frames(path, s, planner)
    _, plan = next(chunks)
    logits, gflops, kept = [], [], {}
    for _, frames in chunks:
        out = run_views(predictor, make_views(frames, s, crops))
        logits.append(out.logits)
        if out.gflops is not None:
            gflops.append(out.gflops)
        for b, k in out.kept.items():
            kept.setdefault(b, []).append(k)
    logits = torch.cat(logits)
    gflops_t = torch.cat(gflops) if gflops else None
    kept_t = {b: torch.cat(v) for b, v in kept.items()}
    fps = _effective_fps(plan.fps, s.target_fps)
    tokens = patch_tokens(predictor)
    agg, probs = scores_and_probs(logits, method)
    result = {
        "path": path, "num_frames": plan.num_frames, "fps": round(float(plan.fps), 4),
        "duration_s": round(plan.num_frames / fps, 4),
        "views": int(logits.shape[0]), "clips": len(plan.starts), "crops": crops,
        "topk": top_k(agg, probs, predictor.label_names, topk),
        "gflops": _gflops_summary(gflops_t), "kept_tokens": _kept_summary(kept_t, tokens),
        "patch_tokens": tokens,
    }
    if per_clip:
        windows = []
        for c, start in enumerate(plan.starts):
            rows = slice(c * crops, (c + 1) * crops)
            a, p = scores_and_probs(logits[rows], method)
            end = min(start + plan.span, plan.num_frames)
            windows.append({
                "index": c, "start_s": round(start / fps, 4), "end_s": round(end / fps, 4),
                "start_frame": int(start), "end_frame": int(math.ceil(end - 1e-9)),
                "frame_indices": plan.indices[c].tolist(),
                "topk": top_k(a, p, predictor.label_names, topk),
                "gflops": _gflops_summary(gflops_t[rows] if gflops_t is not None else None),
                "kept_tokens": _kept_summary({b: v[rows] for b, v in kept_t.items()}, tokens),
            })
        result["stride_s"] = round((plan.starts[1] - plan.starts[0]) / fps, 4) if len(plan.starts) > 1 else None
        result["clip_s"] = round(plan.span / fps, 4)
        result["per_clip"] = windows
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def describe_run(predictor: Predictor, per_clip: bool = False) -> dict:
    """What every answer of a run shares (setting, views, aggregation, dense GFLOPs): known before the first
    video, so that a caller streaming the answers can print it first."""
    from .metrics import AGGREGATION_DOC

    s = predictor.settings()
    method = str(predictor.cfg.TEST.AGGREGATION)
    try:
        from .flops import CONVENTION
    except ImportError:  # pragma: no cover
        CONVENTION = None
    return {
        **predictor.describe(),
        "mode": "per_clip" if per_clip else "views",
        "views": {"clips": 1 if per_clip else s.num_clips, "crops": s.num_crops,
                  "clip_sampling": "sliding" if per_clip else s.clip_sampling},
        "aggregation": method, "aggregation_doc": AGGREGATION_DOC.get(method, ""),
        "score": "probability; its order is the aggregation's order",
        "dense_gflops_per_view": dense_gflops_per_view(predictor), "gflops_convention": CONVENTION,
        "warnings": list(predictor.warnings),
    }


def infer_videos(predictor: Predictor, inputs: Sequence[str], topk: int = 5, per_clip: bool = False,
                 stride: Optional[float] = None, on_result: Optional[Callable[[dict], None]] = None,
                 progress: bool = False) -> dict:
    """Every input answered or listed with its reason; folders expanded (see `expand_inputs`).

    `on_result(answer)` is called as each video is done (so a long folder run shows its answers as they
    come); `progress` draws a bar over the videos on stderr when stderr is a terminal.
    """
    from ..data.decoding import DecodeFailure

    if topk < 1:
        raise VideoATSError(f"--topk {topk}: give at least 1")
    if stride is not None and stride <= 0:
        raise VideoATSError(f"--stride {stride}: give a positive number of seconds")
    run = describe_run(predictor, per_clip)
    paths, skipped = expand_inputs(inputs)
    results, errors = [], []
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="infer", unit="video", file=sys.stderr, dynamic_ncols=True, leave=False)
    try:
        for path in paths:
            try:
                r = predict_video(predictor, path, topk=topk, per_clip=per_clip, stride=stride)
            except DecodeFailure as e:
                errors.append({"path": path, "reason": e.reason, "detail": e.detail})
                r = None
            if bar is not None:
                bar.update(1)
            if r is not None:
                results.append(r)
                if on_result is not None:
                    on_result(r)
    finally:
        if bar is not None:
            bar.close()
    return {**run, "inputs": len(paths), "results": results, "errors": errors, "skipped": skipped}
