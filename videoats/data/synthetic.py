"""A synthetic action benchmark that stands in for Kinetics where Kinetics is not available.

Every class is a motion of the main objects (moving left, rotating clockwise, growing, ...), so no single
frame reveals the class: translations wrap around the frame, rotations start at a random angle, size
changes are cyclic with a random phase, oscillations and orbits start at a random phase. Scenes vary in
complexity along independent factors - 1 to 3 main objects, their size over a 3.5x range, flat or textured
backgrounds, 0-3 static or moving distractors - which gives an adaptive-token model a reason to keep more
tokens on some clips than others; `scenes.csv` records every clip's factors (`complexity`), including the
measured share of pixels that move, so that kept tokens can be set against them.

The output is laid out like a Kinetics copy - `train.csv`/`val.csv`/`test.csv` in the official
`label,youtube_id,time_start,time_end,split` format, H.264 mp4 clips named
`{youtube_id}_{time_start:06d}_{time_end:06d}.mp4` in `<split>/<label>/` folders, and `labels.txt` - so the
very same loaders read it.

The same seed gives the same decoded pixels, on any machine and with any number of workers: every clip draws
from its own seed (seed, split, class, index), and the clips are stored losslessly (H.264 RGB, libx264rgb
crf 0), so a reader decodes exactly the rendered frames. Lossy x264 (even single-threaded) is not
reproducible - the same frames encoded twice decoded up to 42/255 apart - and a conversion to YUV would
depend on the machine's swscale code path; lossless RGB leaves the encoder no choice that shows in the pixels.
(`crf=N` still writes lossy yuv420p H.264, like a Kinetics download, for loader benchmarks; not reproducible.)
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..atomic import atomic_write, atomic_write_text
from ..errors import VideoATSError

CLASS_NAMES = (
    "moving left", "moving right", "moving up", "moving down",
    "rotating clockwise", "rotating counterclockwise", "growing", "shrinking",
    "bouncing", "swinging", "orbiting clockwise", "orbiting counterclockwise",
)
SPLIT_NAMES = ("train", "val", "test")
BACKGROUNDS = ("flat", "gradient", "stripes", "checker", "noise")
SHAPES = ("arrow", "pacman")
_ID_ALPHABET = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"))
_BRIGHT = np.array([(255, 70, 70), (70, 255, 70), (90, 140, 255), (255, 255, 80), (255, 90, 255),
                    (80, 255, 255), (255, 255, 255), (255, 170, 50)], dtype=np.float32)
_CHUNK = 32  # frames rendered at once, to bound memory on long videos
_MOVED = 8  # a pixel moved when a channel differs from the first frame by more than this (anti-aliasing)
STORAGE = "h264rgb-lossless"  # how clips are stored; a cache of clips stored otherwise is not the same data
SCENES = "complexity-2"  # the scene generator; a cache written by another one is not the same data


# ---------------------------------------------------------------------------------------------- scenes


SIZE_RANGE = (0.08, 0.28)  # main objects' radius as a share of the short side, drawn log-uniformly
MAX_OBJECTS = 3


def _scene(rng: np.random.Generator, class_name: str, height: int, width: int) -> dict:
    """All random choices of one clip, drawn up front so that rendering is a pure function of them.

    The complexity factors vary independently across clips, each over a wide range: 1-3 main objects
    (all performing the class's motion, each from its own position and phase), their size (a 3.5x range),
    a flat or textured background and 0-3 distractors.
    """
    side = min(height, width)
    scene = {"class": class_name, "height": height, "width": width}
    scene["background"] = str(rng.choice(BACKGROUNDS))
    dark = rng.uniform(15, 110, size=3)
    scene["bg_colors"] = [dark.tolist(), np.clip(dark + rng.uniform(-45, 45, size=3), 0, 140).tolist()]
    scene["bg_freq"] = float(rng.uniform(2, 6))
    scene["bg_angle"] = float(rng.uniform(0, np.pi))
    scene["bg_noise_seed"] = int(rng.integers(2**31))
    size = float(np.exp(rng.uniform(*np.log(SIZE_RANGE))) * side)
    objects = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        radius = size * float(rng.uniform(0.9, 1.1))
        m = {"x0": float(rng.uniform(radius, width - radius)), "y0": float(rng.uniform(radius, height - radius)),
             "amount": float(rng.uniform(0.45, 0.7)), "phase": float(rng.uniform(0, 1)),
             "turns": float(rng.uniform(0.8, 1.2)), "freq": float(rng.uniform(1.5, 2.5)),
             "orbit": float(rng.uniform(0.5, 0.9) * max(radius, 0.2 * side))}
        # centres that keep non-wrapping motions (mostly) inside the frame
        m["cx"] = float(rng.uniform(min(radius, 0.5 * width), max(width - radius, 0.5 * width)))
        m["cy"] = float(rng.uniform(min(radius, 0.5 * height), max(height - radius, 0.5 * height)))
        objects.append({"shape": str(rng.choice(SHAPES)), "radius": radius,
                        "color": _BRIGHT[rng.integers(len(_BRIGHT))].tolist(),
                        "angle": float(rng.uniform(0, 2 * np.pi)), "motion": m})
    scene["objects"] = objects
    distractors = []
    for _ in range(int(rng.integers(0, 4))):
        distractors.append({
            "shape": str(rng.choice(("disk", "square"))), "radius": float(rng.uniform(0.04, 0.08) * side),
            "color": rng.uniform(60, 230, size=3).tolist(),
            "x0": float(rng.uniform(0, width)), "y0": float(rng.uniform(0, height)),
            "moving": bool(rng.random() < 0.5),
            "vx": float(rng.uniform(-0.4, 0.4) * width), "vy": float(rng.uniform(-0.4, 0.4) * height),
        })
    scene["distractors"] = distractors
    return scene


def _trajectory(scene: dict, obj: dict, t: np.ndarray):
    """(cx, cy, angle, scale, wraps) per frame of one main object; t runs from 0 to 1 over the clip."""
    name, m = scene["class"], obj["motion"]
    h, w = scene["height"], scene["width"]
    n = len(t)
    cx, cy = np.full(n, m["cx"]), np.full(n, m["cy"])
    angle = np.full(n, obj["angle"])
    scale = np.ones(n)
    wraps = False
    if name in ("moving left", "moving right"):
        sign = -1 if name == "moving left" else 1
        cx, cy, wraps = m["x0"] + sign * m["amount"] * w * t, np.full(n, m["y0"]), True
    elif name in ("moving up", "moving down"):
        sign = -1 if name == "moving up" else 1
        cx, cy, wraps = np.full(n, m["x0"]), m["y0"] + sign * m["amount"] * h * t, True
    elif name in ("rotating clockwise", "rotating counterclockwise"):
        sign = 1 if name == "rotating clockwise" else -1  # image y points down: +angle turns clockwise
        angle = obj["angle"] + sign * 2 * np.pi * m["turns"] * t
    elif name in ("growing", "shrinking"):
        sign = 1 if name == "growing" else -1
        scale = 0.45 + 0.85 * np.mod(m["phase"] + sign * 0.75 * t, 1.0)  # cyclic, random phase
    elif name == "bouncing":
        floor = h - obj["radius"] * 1.05
        cy = floor - m["amount"] * (h - 2 * obj["radius"]) * np.abs(np.sin(np.pi * (m["freq"] * t + m["phase"])))
    elif name == "swinging":  # side to side across most of the frame, about one period per clip
        reach = (0.5 * w - obj["radius"]) * (0.5 + m["amount"] / 2)
        cx = 0.5 * w + reach * np.sin(2 * np.pi * (m["freq"] * 0.6 * t + m["phase"]))
    elif name in ("orbiting clockwise", "orbiting counterclockwise"):
        sign = 1 if name == "orbiting clockwise" else -1
        a = 2 * np.pi * (m["phase"] + sign * m["turns"] * 0.8 * t)
        cx, cy = m["cx"] + m["orbit"] * np.cos(a), m["cy"] + m["orbit"] * np.sin(a)
    else:
        raise ValueError(f"unknown synthetic class {name!r}")
    return cx, cy, angle, scale, wraps


def _background(scene: dict) -> np.ndarray:
    h, w = scene["height"], scene["width"]
    c0, c1 = (np.array(c, dtype=np.float32) for c in scene["bg_colors"])
    kind = scene["background"]
    if kind == "flat":
        return np.broadcast_to(c0, (h, w, 3)).copy()
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    side = float(min(h, w))
    a = scene["bg_angle"]
    along = (x * np.cos(a) + y * np.sin(a)) / side
    if kind == "gradient":
        mix = np.clip(along - along.min(), 0, None) / max(float(np.ptp(along)), 1e-6)
    elif kind == "stripes":
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * scene["bg_freq"] * along)
    elif kind == "checker":
        cell = side / (2 * scene["bg_freq"])
        mix = ((np.floor(x / cell) + np.floor(y / cell)) % 2).astype(np.float32)
    else:  # smooth noise: a coarse random grid, bilinearly upsampled
        rng = np.random.default_rng(scene["bg_noise_seed"])
        gh, gw = max(2, int(h / side * scene["bg_freq"] * 2)), max(2, int(w / side * scene["bg_freq"] * 2))
        grid = rng.random((gh + 1, gw + 1)).astype(np.float32)
        gy, gx = y / max(h - 1, 1) * gh, x / max(w - 1, 1) * gw
        y0, x0 = np.minimum(gy.astype(int), gh - 1), np.minimum(gx.astype(int), gw - 1)
        fy, fx = gy - y0, gx - x0
        mix = (grid[y0, x0] * (1 - fy) * (1 - fx) + grid[y0 + 1, x0] * fy * (1 - fx)
               + grid[y0, x0 + 1] * (1 - fy) * fx + grid[y0 + 1, x0 + 1] * fy * fx)
    return c0 + (c1 - c0) * mix[..., None]


def _stamp(frame: np.ndarray, cx: float, cy: float, reach: float, coverage, color, wrap: bool) -> None:
    """Blend one object into `frame` in place, computing pixels only inside its bounding box.

    `coverage(dx, dy)` gives the anti-aliased alpha at offsets from the centre; with `wrap` the object
    is also drawn shifted by the frame size, so that it leaves one side and comes back at the other.
    """
    h, w = frame.shape[:2]
    shifts = [(0.0, 0.0)]
    if wrap:
        cx, cy = cx % w, cy % h
        xs = [0.0] + ([-w] if cx + reach > w else []) + ([w] if cx - reach < 0 else [])
        ys = [0.0] + ([-h] if cy + reach > h else []) + ([h] if cy - reach < 0 else [])
        shifts = [(sx, sy) for sx in xs for sy in ys]
    color = np.asarray(color, dtype=np.float32)
    for sx, sy in shifts:
        x0, x1 = int(max(0, np.floor(cx + sx - reach))), int(min(w, np.ceil(cx + sx + reach) + 1))
        y0, y1 = int(max(0, np.floor(cy + sy - reach))), int(min(h, np.ceil(cy + sy + reach) + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        alpha = coverage(dx + 0.5 - (cx + sx), dy + 0.5 - (cy + sy))[..., None]
        region = frame[y0:y1, x0:x1].astype(np.float32)
        frame[y0:y1, x0:x1] = region + (color - region) * alpha + 0.5  # truncation of +0.5 rounds


def _main_alpha(shape: str, dx, dy, angle: float, size: float) -> np.ndarray:
    """Anti-aliased coverage of a shape without rotational symmetry, so that rotation shows."""
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (cos * dx + sin * dy) / size
    v = (-sin * dx + cos * dy) / size
    if shape == "arrow":  # isosceles triangle pointing along +u: tip (1, 0), base at u = -0.7
        edge = (1.7 * np.abs(v) + 0.6 * u - 0.6) / 1.803
        dist = np.maximum(-0.7 - u, edge) * size
        return np.clip(0.5 - dist, 0, 1)
    rho = np.sqrt(u * u + v * v)  # pacman: a disk with a 70 degree wedge cut out along +u
    disk = np.clip(0.5 - (rho - 1) * size, 0, 1)
    wedge = np.clip(0.5 - (np.abs(np.arctan2(v, u)) - np.radians(35)) * rho * size, 0, 1)
    return disk * (1 - wedge)


def _distractor_alpha(shape: str, radius: float):
    if shape == "disk":
        return lambda dx, dy: np.clip(0.5 - (np.sqrt(dx * dx + dy * dy) - radius), 0, 1)
    return lambda dx, dy: np.clip(0.5 - (np.maximum(np.abs(dx), np.abs(dy)) - radius), 0, 1)


def render_frames(scene: dict, num_frames: int, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
    """Frames [start, stop) of a scene as uint8 (N, H, W, 3); numpy work per object and frame, on the
    object's bounding box only (no per-pixel Python)."""
    stop = num_frames if stop is None else stop
    t = np.arange(start, stop, dtype=np.float64) / max(num_frames - 1, 1)
    background = np.clip(_background(scene) + 0.5, 0, 255).astype(np.uint8)
    frames = np.repeat(background[None], len(t), axis=0)
    paths = [(obj, *_trajectory(scene, obj, t)) for obj in scene["objects"]]
    for i, frame in enumerate(frames):
        for d in scene["distractors"]:
            tt = t[i] if d["moving"] else 0.0
            _stamp(frame, d["x0"] + d["vx"] * tt, d["y0"] + d["vy"] * tt, d["radius"] * 1.5 + 1,
                   _distractor_alpha(d["shape"], d["radius"]), d["color"], True)
        for obj, cx, cy, angle, scale, wraps in paths:
            size, turn = float(obj["radius"] * scale[i]), float(angle[i])
            _stamp(frame, float(cx[i]), float(cy[i]), size * 1.2 + 1,
                   lambda dx, dy: _main_alpha(obj["shape"], dx, dy, turn, size), obj["color"], wraps)
    return frames


def complexity(scene: dict, moving_pixels: float) -> dict:
    """The complexity factors of one clip, as recorded in scenes.csv; `moving_pixels` is the measured share
    of pixels that change at some frame (what ATS should need tokens for: everything that moves)."""
    objects = scene["objects"]
    area = sum(np.pi * o["radius"] ** 2 for o in objects) / (scene["height"] * scene["width"])
    return {"objects": len(objects), "object_radius": round(float(np.mean([o["radius"] for o in objects])), 2),
            "object_area": round(float(area), 4), "background": scene["background"],
            "textured": int(scene["background"] != "flat"), "distractors": len(scene["distractors"]),
            "moving_distractors": sum(d["moving"] for d in scene["distractors"]),
            "moving_pixels": round(float(moving_pixels), 4)}


# ---------------------------------------------------------------------------------------------- writing


def write_mp4(path: str, chunks, height: int, width: int, fps: int = 30, crf: Optional[int] = None) -> None:
    """Lossless H.264 in RGB (crf None: decodes to exactly the frames given), or lossy yuv420p at `crf`."""
    import av

    codec, pix_fmt = ("libx264rgb", "rgb24") if crf is None else ("libx264", "yuv420p")

    def encode(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            stream.options = {"crf": str(0 if crf is None else crf), "preset": "veryfast", "threads": "1"}
            stream.codec_context.thread_count = 1
            for chunk in chunks:
                for array in chunk:
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
                    for packet in stream.encode(frame):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    atomic_write(path, encode)


def _youtube_id(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_ID_ALPHABET, size=11))


def _plan(num_classes: int, per_class: Dict[str, int], seed: int) -> List[dict]:
    """Names and scene seeds of every clip, in a fixed order; ids are unique across splits."""
    plan, used = [], set()
    for split_code, split in enumerate(SPLIT_NAMES):
        for class_index in range(num_classes):
            for k in range(per_class.get(split, 0)):
                rng = np.random.default_rng([seed, split_code, class_index, k])
                yid = _youtube_id(rng)
                while yid in used:
                    yid = _youtube_id(rng)
                used.add(yid)
                start = int(rng.integers(0, 290))
                plan.append({"split": split, "label": CLASS_NAMES[class_index], "youtube_id": yid,
                             "time_start": start, "time_end": start + 10,
                             "scene_seed": [seed, split_code, class_index, k, 1]})
    return plan


def _make_one(job: dict) -> dict:
    rng = np.random.default_rng(job["scene_seed"])
    scene = _scene(rng, job["label"], job["height"], job["width"])
    n = job["num_frames"]
    first, moved = None, None

    def chunks():  # rendered once: the pixels that change are found while the clip is written
        nonlocal first, moved
        for s in range(0, n, _CHUNK):
            chunk = render_frames(scene, n, s, min(s + _CHUNK, n))
            first = chunk[0].astype(np.int16) if first is None else first
            change = (np.abs(chunk.astype(np.int16) - first) > _MOVED).any(axis=(0, 3))
            moved = change if moved is None else moved | change
            yield chunk

    os.makedirs(os.path.dirname(job["path"]), exist_ok=True)
    write_mp4(job["path"], chunks(), job["height"], job["width"], job["fps"], job["crf"])
    return {"name": os.path.basename(job["path"]), "split": job["split"], "label": job["label"],
            **complexity(scene, float(moved.mean()))}


def _per_class(videos_per_class: Union[int, Sequence[int], Dict[str, int]]) -> Dict[str, int]:
    if isinstance(videos_per_class, dict):
        unknown = set(videos_per_class) - set(SPLIT_NAMES)
        if unknown:
            raise VideoATSError(f"unknown split(s) {sorted(unknown)} in videos_per_class; use train, val, test")
        return {s: int(videos_per_class.get(s, 0)) for s in SPLIT_NAMES}
    if isinstance(videos_per_class, int):
        return {"train": videos_per_class, "val": max(1, videos_per_class // 4),
                "test": max(1, videos_per_class // 4)}
    counts = list(videos_per_class) + [0] * 3
    return dict(zip(SPLIT_NAMES, (int(c) for c in counts[:3])))


def make_synthetic(out_dir: str, num_classes: int = 10,
                   videos_per_class: Union[int, Sequence[int], Dict[str, int]] = (16, 4, 4),
                   num_frames: int = 32, size: Union[int, Tuple[int, int]] = 64, fps: int = 30,
                   seed: int = 0, crf: Optional[int] = None, workers: int = 1) -> dict:
    """Write the benchmark under `out_dir` and return a summary (paths, counts per split, seconds).

    videos_per_class: per split, as an int (train; val and test get a quarter, at least 1), a
    (train, val, test) sequence or a {split: count} dict. size: square side or (height, width), even
    numbers. fps: a whole number of frames per second, at least 1. crf: None (lossless and reproducible, see
    the module docstring) or an x264 quality for lossy files. workers > 1 renders and encodes in that many
    processes; the output is the same.
    """
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise VideoATSError(f"num_classes must be 1..{len(CLASS_NAMES)} (there are {len(CLASS_NAMES)} "
                            f"motion classes), got {num_classes}")
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height % 2 or width % 2 or min(height, width) < 16:
        raise VideoATSError(f"synthetic video size {height}x{width}: give even sizes of at least 16 "
                            f"(even, so that the lossy yuv420p option works too)")
    if num_frames < 2:
        raise VideoATSError(f"num_frames must be at least 2, got {num_frames}")
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise VideoATSError(f"frame rate (--fps) must be a whole number of at least 1, got {fps}")
    per_class = _per_class(videos_per_class)
    started = time.perf_counter()
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    plan = _plan(num_classes, per_class, seed)
    for job in plan:
        job.update(height=height, width=width, num_frames=num_frames, fps=fps, crf=crf,
                   path=os.path.join(out_dir, job["split"], job["label"],
                                     f"{job['youtube_id']}_{job['time_start']:06d}_{job['time_end']:06d}.mp4"))
    if workers > 1 and len(plan) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            scenes = list(pool.map(_make_one, plan, chunksize=max(1, len(plan) // (workers * 8))))
    else:
        scenes = [_make_one(job) for job in plan]

    names = sorted(CLASS_NAMES[:num_classes])
    files = {}
    for split in SPLIT_NAMES:
        rows = [j for j in plan if j["split"] == split]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for j in rows:
            writer.writerow([j["label"], j["youtube_id"], j["time_start"], j["time_end"], split])
        files[split] = atomic_write_text(os.path.join(out_dir, f"{split}.csv"), buf.getvalue())
    files["labels"] = atomic_write_text(os.path.join(out_dir, "labels.txt"), "".join(n + "\n" for n in names))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(scenes[0]) if scenes else ["name"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(scenes)
    files["scenes"] = atomic_write_text(os.path.join(out_dir, "scenes.csv"), buf.getvalue())
    summary = {"out_dir": out_dir, "num_classes": num_classes, "label_names": names,
               "videos": {s: sum(1 for j in plan if j["split"] == s) for s in SPLIT_NAMES},
               "num_frames": num_frames, "height": height, "width": width, "fps": fps, "seed": seed,
               "storage": STORAGE if crf is None else f"h264-yuv420p-crf{crf}", "scenes": SCENES,
               "files": files, "seconds": round(time.perf_counter() - started, 3)}
    atomic_write_text(os.path.join(out_dir, "synthetic.json"),
                json.dumps({k: v for k, v in summary.items() if k not in ("seconds", "out_dir", "files")},
                           indent=1) + "\n")
    return summary
