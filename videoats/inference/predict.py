"""Run a model on the user's own videos: whole-video predictions over the test views, or one per clip.

Why it is built this way:
- A `Predictor` is made once (config, checkpoint metadata, weights, label names) and then asked about any
  number of videos, so that `infer`, `visualize` and the demo share one way of turning flags into a model.
- Frames are decoded, sampled and cropped with `videoats.data` (the same decoder fallbacks, timeouts and
  protocol frame indices as `eval`), so a video gets the same views here as in an evaluation.
- A bad video never stops the others: it comes back as a `DecodeFailure` whose reason is one of `data.decoding.REASONS`,
  and the caller lists it next to the answers for the good ones.
- The scores shown are probabilities whose order is the order of the configured aggregation
  (TEST.AGGREGATION), so that the top-k a user reads is the top-k `eval` scores.
- Unless the clips are asked for (`--views`, TEST.NUM_ENSEMBLE_VIEWS), a whole-video answer covers the
  video (`cover_plan`: enough clips to tile it, at most DEFAULT_MAX_CLIPS), and every answer says which
  seconds its clips covered: an answer about "the video" from its first second alone would mislead.
- Frames are normalised and resized as they are decoded (`protocol_frame`), so memory follows the model's
  input size, not the video's.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor
from tqdm import tqdm

from .. import runner
from ..data.clips import make_views  # noqa: F401  (flops imports it from here)
from ..data.clips import (cover_plan, covered_seconds, crop_views, protocol_frame, protocol_plan, read_clip_frames,
                          sliding_plan)
from ..data.decoding import DecodeFailure
from ..data.files import expand_inputs
from ..data.sampling import clip_span, frame_indices
from ..errors import VideoATSError
from ..evaluation.metrics import AGGREGATION_DOC, aggregate, probabilities
from ..flops import CONVENTION, analytic_gflops
from ..runner import ViewOutputs
from ..summary import stats, top_k
from .predictor import Predictor

DEFAULT_MAX_CLIPS = 10  # whole-video answers without --views: clips to cover the video, at most this many
MIN_CLIPS_FOR_BAR = 32  # a video with more clips than two reads' worth shows a bar over its clips too


def run_views(predictor: Predictor, views: Tensor, keep_masks: bool = False) -> ViewOutputs:
    """Forward views in chunks of TEST.BATCH_SIZE: logits, per-view GFLOPs and kept tokens (`runner.Runner`)."""
    return runner.Runner(predictor.model, predictor.device, int(predictor.cfg.TEST.BATCH_SIZE), predictor.forward,
                         predictor.autocast, keep_masks).run(views)


def scores_and_probs(view_logits: Tensor, method: str) -> Tuple[Tensor, Tensor]:
    """(aggregated scores, probabilities in the same order) of one video's views (`metrics.probabilities`)."""
    agg = aggregate(view_logits, method)
    return agg, probabilities(agg, method, view_logits.shape[0])


def _gflops_summary(gflops: Optional[Tensor]) -> Optional[dict]:
    if gflops is None or gflops.numel() == 0:
        return None
    return {"per_view": round(float(gflops.mean()), 6), "per_view_min": round(float(gflops.min()), 6),
            "per_view_max": round(float(gflops.max()), 6), "total": round(float(gflops.sum()), 6),
            "views": int(gflops.numel())}


def _kept_summary(kept: Dict[int, Tensor], patch_tokens: int) -> List[dict]:
    out = []
    for b in sorted(kept):
        s = {k: round(v, 6) for k, v in stats(kept[b]).items()}
        out.append({"block": int(b), **s, "fraction": round(s["mean"] / max(1, patch_tokens), 6)})
    return out


def patch_tokens(predictor: Predictor) -> int:
    _, t, h, w = predictor.view_shape()
    p = predictor.patch_size
    return int(t * (h // p) * (w // p))


def dense_gflops_per_view(predictor: Predictor) -> float:
    """The dense model's per-view count (analytic, no tracing), to set beside what ATS spent."""
    return round(float(analytic_gflops(predictor.model, predictor.view_shape())), 6)


# ---------------------------------------------------------------------------------------------- per video


def _clip_planner(predictor: Predictor, per_clip: bool, stride: Optional[float]):
    s = predictor.settings()
    if per_clip:
        return lambda n, fps: sliding_plan(s, n, fps, stride)
    if predictor.clips_given:
        return lambda n, fps: protocol_plan(s, n, fps)
    return lambda n, fps: cover_plan(s, n, fps, DEFAULT_MAX_CLIPS)


def predict_video(predictor: Predictor, path: str, topk: int = 5, per_clip: bool = False,
                  stride: Optional[float] = None,
                  on_progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Top-k over the test views of one video (or, `per_clip`, of every sliding clip too).

    Raises DecodeFailure for a video that cannot be used; everything else about the video is in the dict,
    `coverage` included: the seconds each clip spans (the presentation times of the frames it used).
    `on_progress(clips done, clips in all)` is called as each piece of a long video is done.
    """
    started = time.perf_counter()
    s = predictor.settings()
    crops = int(predictor.cfg.TEST.NUM_SPATIAL_CROPS)
    chunks = read_clip_frames(path, s, _clip_planner(predictor, per_clip, stride), transform=protocol_frame(s))
    _, plan = next(chunks)
    outs = []
    for first, frames in chunks:
        outs.append(run_views(predictor, crop_views(frames, s, crops)))
        if on_progress is not None:
            on_progress(first + len(frames), len(plan.starts))
    return answer(predictor, plan, runner.concat(outs), {"path": path}, topk, per_clip, started)


def predict_frames(predictor: Predictor, frames, fps: float, topk: int = 5, per_clip: bool = False,
                   stride: Optional[float] = None) -> dict:
    """`predict_video` for frames already in memory: uint8 (T, H, W, 3) RGB (numpy or torch) at `fps`.

    The same clips, views and answer as for a video file of those frames; each frame a clip uses is
    normalised and resized once (`protocol_frame`), so no float copy of the whole array is made."""
    started = time.perf_counter()
    frames = check_frames(frames)
    s = predictor.settings()
    crops = int(predictor.cfg.TEST.NUM_SPATIAL_CROPS)
    plan = _clip_planner(predictor, per_clip, stride)(len(frames), float(fps))
    plan.fps = float(fps)
    transform = protocol_frame(s)
    small = {int(i): transform(frames[int(i)]) for i in np.unique(plan.indices)}
    per_run = max(1, int(predictor.cfg.TEST.BATCH_SIZE) // max(1, crops))
    outs = []
    for first in range(0, len(plan.starts), per_run):
        clips = np.stack([np.stack([small[int(i)] for i in row]) for row in plan.indices[first:first + per_run]])
        outs.append(run_views(predictor, crop_views(clips, s, crops)))
    return answer(predictor, plan, runner.concat(outs), {"path": None}, topk, per_clip, started)


def check_frames(frames) -> np.ndarray:
    """uint8 (T, H, W, 3) as numpy, or VideoATSError saying what was given and what is wanted."""
    array = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8 or len(array) == 0:
        raise VideoATSError(f"frames of shape {tuple(array.shape)} and type {array.dtype}: give uint8 RGB frames "
                            "shaped (T, H, W, 3), T at least 1")
    return array


def answer(predictor: Predictor, plan, out: ViewOutputs, head: dict, topk: int, per_clip: bool,
           started: float) -> dict:
    """One video's answer from its clip plan and the outputs of its views (clip-major, crops inner)."""
    s = predictor.settings()
    crops = int(predictor.cfg.TEST.NUM_SPATIAL_CROPS)
    method = str(predictor.cfg.TEST.AGGREGATION)
    logits, gflops_t, kept_t = out.logits, out.gflops, out.kept
    tokens = patch_tokens(predictor)
    agg, probs = scores_and_probs(logits, method)
    windows = [plan.window(c) for c in range(len(plan.starts))]
    duration = plan.duration()
    covered = covered_seconds(windows)
    result = {
        **head, "num_frames": plan.num_frames, "fps": round(float(plan.fps), 4),
        "duration_s": round(duration, 4), "variable_frame_rate": plan.by_time,
        "views": int(logits.shape[0]), "clips": len(plan.starts), "crops": crops,
        "coverage": {"windows_s": [[round(a, 4), round(b, 4)] for a, b in windows],
                     "covered_s": round(covered, 4),
                     "fraction": round(min(1.0, covered / duration), 4) if duration > 0 else 1.0},
        "topk": top_k(agg, predictor.label_names, topk, probs),
        "gflops": _gflops_summary(gflops_t), "kept_tokens": _kept_summary(kept_t, tokens),
        "patch_tokens": tokens,
    }
    if plan.num_frames < plan.span:
        has = f"{plan.num_frames} frame" + ("" if plan.num_frames == 1 else "s")
        result["short"] = (f"the video has {has} but a clip spans {math.ceil(plan.span)}: "
                           "its last frame is repeated to fill the clip, so the answer is less reliable")
    if per_clip:
        clips = []
        for c, (start_s, end_s) in enumerate(windows):
            rows = slice(c * crops, (c + 1) * crops)
            a, p = scores_and_probs(logits[rows], method)
            used = plan.indices[c]
            clips.append({
                "index": c, "start_s": round(start_s, 4), "end_s": round(end_s, 4),
                "start_frame": int(used.min()), "end_frame": int(used.max()) + 1,
                "frame_indices": used.tolist(),
                "topk": top_k(a, predictor.label_names, topk, p),
                "gflops": _gflops_summary(gflops_t[rows] if gflops_t is not None else None),
                "kept_tokens": _kept_summary({b: v[rows] for b, v in kept_t.items()}, tokens),
            })
        fps = plan.fps if plan.fps > 0 else float(s.target_fps)
        result["stride_s"] = round((plan.starts[1] - plan.starts[0]) / fps, 4) if len(plan.starts) > 1 else None
        result["clip_s"] = round(plan.span / fps, 4)
        result["per_clip"] = clips
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def stream_windows(predictor: Predictor, frames: Iterable, fps: float, stride: Optional[float] = None,
                   topk: int = 5, probabilities_out: Optional[list] = None) -> Iterator[dict]:
    """Answers for a sliding window over a stream of frames, each yielded as soon as its last frame arrives.

    `frames`: any iterable of uint8 (H, W, 3) RGB frames at a constant `fps` (a camera, a decoder loop).
    Windows are the clips `infer --per-clip` takes (one clip long, every `stride` seconds; default one
    clip length), with the same frame positions, and when the stream ends between two of them one more
    window ending at its last frame; only the small resized frames of the windows still open are kept. A
    stream shorter than one clip gives one answer with its last frame repeated (`short`).
    `probabilities_out`: a list that receives each window's full probability vector (for a stream's mean)."""
    s = predictor.settings()
    crops = int(predictor.cfg.TEST.NUM_SPATIAL_CROPS)
    span = clip_span(s.num_frames, s.sampling_rate, fps, s.target_fps)
    if not (fps and math.isfinite(fps) and fps > 0) or (stride is not None and not (math.isfinite(stride)
                                                                                  and stride > 0)):
        raise VideoATSError(f"fps {fps} and stride {stride}: give a positive frame rate and stride")
    step = span if not stride else float(stride) * float(fps)
    transform = protocol_frame(s)
    kept: Dict[int, np.ndarray] = {}
    count, window = 0, 0

    def emit(start: float, length: int) -> dict:
        rows = frame_indices(start, span, s.num_frames, length)
        clip = np.stack([kept[int(i)] for i in rows])[None]
        out = run_views(predictor, crop_views(clip, s, crops))
        method = str(predictor.cfg.TEST.AGGREGATION)
        agg, probs = scores_and_probs(out.logits, method)
        if probabilities_out is not None:
            probabilities_out.append(probs)
        first, last = int(rows.min()), int(rows.max())
        result = {"index": window, "start_s": round(first / fps, 4), "end_s": round((last + 1) / fps, 4),
                  "frame_indices": rows.tolist(), "topk": top_k(agg, predictor.label_names, topk, probs),
                  "gflops": _gflops_summary(out.gflops)}
        if length < span:
            result["short"] = f"the stream ended after {length} frames, less than a clip ({math.ceil(span)})"
        return result

    for frame in frames:
        kept[count] = transform(check_frames(np.asarray(frame)[None])[0])
        count += 1
        while window * step + span - 1 < count:  # the frame at the window's last position has arrived
            yield emit(window * step, count)
            window += 1
        # frames neither the next window nor a last window ending at the newest frame can use
        oldest = min(int(window * step), count - math.ceil(span) - 1)
        for i in [i for i in kept if i < oldest]:
            del kept[i]
    if count and (window == 0 or (window - 1) * step < count - span - 1e-6):
        # the end of the stream: one more window ending at its last frame (as `infer --per-clip` ends a
        # video), or for a stream shorter than a clip the one it has
        yield emit(0.0 if window == 0 else count - span, count)


def describe_run(predictor: Predictor, per_clip: bool = False) -> dict:
    """What every answer of a run shares (setting, views, aggregation, dense GFLOPs): known before the first
    video, so that a caller streaming the answers can print it first."""
    s = predictor.settings()
    method = str(predictor.cfg.TEST.AGGREGATION)
    return {
        **predictor.describe(),
        "mode": "per_clip" if per_clip else "views",
        "views": ({"clips": 1, "crops": s.num_crops, "clip_sampling": "sliding"} if per_clip else
                  {"clips": s.num_clips, "crops": s.num_crops, "clip_sampling": s.clip_sampling}
                  if predictor.clips_given else  # clips: as many as cover each video, at most max_clips
                  {"clips": None, "max_clips": DEFAULT_MAX_CLIPS, "crops": s.num_crops, "clip_sampling": "cover"}),
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
    if topk < 1:
        raise VideoATSError(f"--topk {topk}: give at least 1")
    if stride is not None and stride <= 0:
        raise VideoATSError(f"--stride {stride}: give a positive number of seconds")
    run = describe_run(predictor, per_clip)
    paths, skipped = expand_inputs(inputs)
    results, errors = [], []
    bar = None
    if progress and sys.stderr.isatty():
        bar = tqdm(total=len(paths), desc="infer", unit="video", file=sys.stderr, dynamic_ncols=True, leave=False)
    windows = {}

    def window_progress(done: int, total: int) -> None:  # a second bar for a long video's clips
        if bar is None or total < 2 * MIN_CLIPS_FOR_BAR:
            return
        if "bar" not in windows:
            windows["bar"] = tqdm(total=total, desc="clips", unit="clip", file=sys.stderr, dynamic_ncols=True,
                                  leave=False, position=1)
        windows["bar"].update(done - windows["bar"].n)

    try:
        for path in paths:
            try:
                r = predict_video(predictor, path, topk=topk, per_clip=per_clip, stride=stride,
                                  on_progress=window_progress)
            except DecodeFailure as e:
                errors.append({"path": path, "reason": e.reason, "detail": e.detail})
                r = None
            if "bar" in windows:
                windows.pop("bar").close()
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
