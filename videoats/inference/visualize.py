"""Pictures of what ATS keeps: every stage's kept tokens drawn over the frames the model saw.

Drawn with PIL on an exact pixel layout (no figure margins that move with the text), because the layout
is part of the contract: `render_token_grid` returns where every panel is, so a test or a caller can read
a patch back out of the image. Kept patches are shown at full brightness and dropped ones darkened, which
is the picture a user needs to judge whether the sampler keeps the moving object and drops the background.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.clips import make_views, protocol_plan, read_clip_frames, view_pixels
from ..errors import VideoATSError
from ..summary import top_k
from .predict import dense_gflops_per_view, run_views, scores_and_probs

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
GRID = (255, 255, 255)
MIN_PANEL, MAX_PANEL = 160, 320  # panel side in pixels: small crops are enlarged, large ones reduced


def label_font(size: int = 13):
    """Pillow's own font at `size` px (Pillow 10.1+), else its small bitmap font (for the pictures and the
    labelled videos)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> Tuple[int, int]:
    box = draw.multiline_textbbox((0, 0), text, font=font, spacing=2)
    return box[2] - box[0], box[3] - box[1]


def _as_masks(masks: Dict[int, object], frames: int, grid: int) -> Dict[int, np.ndarray]:
    out = {}
    for block, m in sorted(masks.items(), key=lambda kv: int(kv[0])):
        a = m.detach().cpu().numpy() if hasattr(m, "detach") else np.asarray(m)
        a = a.astype(bool)
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.shape != (frames, grid):
            raise VideoATSError(f"token mask of block {block} has shape {tuple(a.shape)}; expected (T, L0) = "
                                f"({frames}, {grid}) for these frames and patch size")
        out[int(block)] = a
    return out


def choose_rows(num_frames: int, count: Optional[int]) -> List[int]:
    """`count` frames spread evenly over the clip, first and last included (all when count is None)."""
    if not count or count >= num_frames:
        return list(range(num_frames))
    if count < 1:
        raise VideoATSError(f"--frames {count}: give at least 1")
    return sorted(set(int(round(x)) for x in np.linspace(0, num_frames - 1, count)))


def _panel_scale(height: int, width: int) -> float:
    side = max(height, width)
    if side < MIN_PANEL:
        return float(math.ceil(MIN_PANEL / side))  # integer: every patch stays a whole block of pixels
    if side > MAX_PANEL:
        return MAX_PANEL / side
    return 1.0


def shade_tokens(frame: np.ndarray, keep: np.ndarray, patch_size: int, dim: float = 0.3) -> np.ndarray:
    """One frame (H, W, 3) uint8 with the patches not in `keep` (L0,) darkened to `dim` of their value."""
    h, w = frame.shape[:2]
    gh, gw = h // patch_size, w // patch_size
    if keep.size != gh * gw:
        raise VideoATSError(f"a mask of {keep.size} patches does not fit a {h}x{w} frame with {patch_size} px "
                            f"patches ({gh}x{gw} = {gh * gw})")
    pix = np.ones((h, w), dtype=bool)
    pix[:gh * patch_size, :gw * patch_size] = np.kron(keep.reshape(gh, gw),
                                                      np.ones((patch_size, patch_size), dtype=bool))
    out = frame.astype(np.float32)
    out[~pix] *= dim
    return out.round().clip(0, 255).astype(np.uint8)


class _Layout:
    """Sizes and positions shared by the PNG grid and every GIF frame."""

    def __init__(self, frame_hw: Tuple[int, int], columns: List[str], rows: int, row_labels: Sequence[str],
                 title: str, font):
        from PIL import Image, ImageDraw

        self.font = font
        probe = ImageDraw.Draw(Image.new("RGB", (8, 8)))
        self.scale = _panel_scale(*frame_hw)
        self.panel = (int(round(frame_hw[0] * self.scale)), int(round(frame_hw[1] * self.scale)))  # (h, w)
        self.gap = 6
        self.columns = columns
        head_h = max(_text_size(probe, c, font)[1] for c in columns)
        label_w = max([_text_size(probe, r, font)[0] for r in row_labels] + [0])
        title_w, title_h = _text_size(probe, title, font) if title else (0, 0)
        self.title_h = title_h + self.gap if title else 0
        self.x0 = self.gap * 2 + label_w
        self.y0 = self.gap + self.title_h + head_h + self.gap
        self.dx, self.dy = self.panel[1] + self.gap, self.panel[0] + self.gap
        # as wide as the panels or the title, whichever is wider: with one ATS stage (two columns) the
        # title is the wider one and would be cut off at the panels' edge
        self.width = max(self.x0 + len(columns) * self.dx + self.gap, self.gap + title_w + self.gap)
        self.height = self.y0 + rows * self.dy + self.gap
        self.title = title

    def panel_origin(self, row: int, col: int) -> Tuple[int, int]:
        return self.x0 + col * self.dx, self.y0 + row * self.dy

    def info(self) -> dict:
        return {"width": self.width, "height": self.height, "panel": list(self.panel), "origin": [self.x0, self.y0],
                "step": [self.dx, self.dy], "scale": self.scale, "columns": list(self.columns)}


def _resize_panel(img, layout: _Layout):
    from PIL import Image

    size = (layout.panel[1], layout.panel[0])
    if img.size == size:
        return img
    return img.resize(size, Image.NEAREST if layout.scale >= 1 else Image.BOX)


def _draw_grid(draw, x: int, y: int, layout: _Layout, frame_hw: Tuple[int, int], patch_size: int) -> None:
    step = patch_size * layout.scale
    if step < 6:
        return  # lines closer than this hide the picture
    gh, gw = frame_hw[0] // patch_size, frame_hw[1] // patch_size
    for i in range(1, gw):
        xx = x + int(round(i * step))
        draw.line([(xx, y), (xx, y + layout.panel[0] - 1)], fill=GRID + (70,), width=1)
    for j in range(1, gh):
        yy = y + int(round(j * step))
        draw.line([(x, yy), (x + layout.panel[1] - 1, yy)], fill=GRID + (70,), width=1)


def _compose(frames: np.ndarray, masks: Dict[int, np.ndarray], patch_size: int, rows: List[int],
             row_labels: List[str], layout: _Layout, grid: bool, dim: float):
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw, lines = ImageDraw.Draw(canvas), ImageDraw.Draw(overlay)
    if layout.title:
        draw.text((layout.gap, layout.gap), layout.title, fill=TEXT, font=layout.font)
    for c, name in enumerate(layout.columns):
        x, _ = layout.panel_origin(0, c)
        draw.multiline_text((x, layout.gap + layout.title_h), name, fill=TEXT, font=layout.font, spacing=2)
    blocks = sorted(masks)
    frame_hw = frames.shape[1:3]
    for r, (t, label) in enumerate(zip(rows, row_labels)):
        _, y = layout.panel_origin(r, 0)
        tw, th = _text_size(draw, label, layout.font)
        draw.text((layout.x0 - layout.gap - tw, y + (layout.panel[0] - th) // 2), label, fill=TEXT, font=layout.font)
        panels = [frames[t]] + [shade_tokens(frames[t], masks[b][t], patch_size, dim) for b in blocks]
        for c, pixels in enumerate(panels):
            x, y = layout.panel_origin(r, c)
            canvas.paste(_resize_panel(Image.fromarray(pixels), layout), (x, y))
            if grid and c > 0:
                _draw_grid(lines, x, y, layout, frame_hw, patch_size)
    canvas.paste(overlay, (0, 0), overlay)
    return canvas


def _columns(masks: Dict[int, np.ndarray]) -> List[str]:
    cols = ["input\n "]
    for b, m in masks.items():
        cols.append(f"block {b}\nkept {int(m.sum())}/{m.size} ({100.0 * m.sum() / max(1, m.size):.0f}%)")
    return cols


def _prepare(frames_uint8, masks, patch_size):
    frames = np.asarray(frames_uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoATSError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    t, h, w = frames.shape[:3]
    if patch_size < 1 or h < patch_size or w < patch_size:
        raise VideoATSError(f"patch size {patch_size} does not fit {h}x{w} frames")
    return frames, _as_masks(masks, t, (h // patch_size) * (w // patch_size))


def render_token_grid(frames_uint8, masks: Dict[int, object], patch_size: int, path: str,
                      rows: Optional[Sequence[int]] = None, frame_labels: Optional[Sequence[str]] = None,
                      title: str = "", grid: bool = True, dim: float = 0.3) -> dict:
    """Write a PNG: a row per frame (all, or the frame positions in `rows`), a column for the input and one
    per ATS stage with the dropped patches darkened; titles give the block and its kept count.

    frames_uint8 (T, H, W, 3) are the pixels the model saw (the crop), masks {block: (T, L0) bool} over
    the row-major patch grid (what `videoats.ats.token_masks` gives, one sample). Returns the layout (size,
    panel positions) so a caller can locate any patch in the image.
    """
    from PIL import Image  # noqa: F401  (fail early with the import error, not half-way)

    frames, masks = _prepare(frames_uint8, masks, patch_size)
    rows = list(range(frames.shape[0])) if rows is None else [int(r) for r in rows]
    if not rows or min(rows) < 0 or max(rows) >= frames.shape[0]:
        raise VideoATSError(f"rows {rows} out of range for a clip of {frames.shape[0]} frames")
    labels = [str(x) for x in frame_labels] if frame_labels is not None else [f"frame {t}" for t in rows]
    if len(labels) != len(rows):
        raise VideoATSError(f"{len(labels)} frame labels for {len(rows)} rows")
    layout = _Layout(frames.shape[1:3], _columns(masks), len(rows), labels, title, label_font())
    image = _compose(frames, masks, patch_size, rows, labels, layout, grid, dim)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    image.save(path, format="PNG")
    return {"path": os.path.abspath(path), "rows": len(rows), "cols": len(layout.columns), "frames": rows,
            "blocks": sorted(masks), **layout.info()}


def render_token_gif(frames_uint8, masks: Dict[int, object], patch_size: int, path: str,
                     rows: Optional[Sequence[int]] = None, frame_labels: Optional[Sequence[str]] = None,
                     title: str = "", grid: bool = True, dim: float = 0.3, duration_ms: int = 400) -> dict:
    """Write an animated GIF cycling over the frames, the input and every stage side by side (one GIF frame
    per video frame, each labelled, so no two are identical and none is merged away)."""
    frames, masks = _prepare(frames_uint8, masks, patch_size)
    rows = list(range(frames.shape[0])) if rows is None else [int(r) for r in rows]
    labels = [str(x) for x in frame_labels] if frame_labels is not None else [f"frame {t}" for t in rows]
    labels = [f"{lab}\n{i + 1}/{len(rows)}" for i, lab in enumerate(labels)]
    layout = _Layout(frames.shape[1:3], _columns(masks), 1, labels, title, label_font())
    images = [_compose(frames, masks, patch_size, [t], [lab], layout, grid, dim) for t, lab in zip(rows, labels)]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=int(duration_ms),
                   loop=0, optimize=False)
    return {"path": os.path.abspath(path), "frames": len(images), "duration_ms": int(duration_ms),
            "width": layout.width, "height": layout.height}


def visualize_clip(predictor, path: str, output: str, gif: Optional[str] = None, frames: Optional[int] = None,
                   grid: bool = True) -> dict:
    """Run the ATS model on one view of `path` (the first temporal clip, centre crop) and draw its stages.

    Raises DecodeFailure when the video cannot be used, VideoATSError when the model samples no tokens.
    """
    if not predictor.ats_enabled:
        raise VideoATSError(f"{predictor.model_name} runs without ATS: there are no token stages to draw "
                            "(set ATS.ENABLE True and ATS.BLOCKS)")
    s = predictor.settings()

    def first_clip(n: int, fps: float):
        plan = protocol_plan(s, n, fps)
        plan.starts, plan.indices = plan.starts[:1], plan.indices[:1]
        return plan

    chunks = read_clip_frames(path, s, first_clip)
    _, plan = next(chunks)
    _, clip = next(chunks)
    view = make_views(clip, s, 1)  # one crop: the centre
    out = run_views(predictor, view, keep_masks=True)
    masks = {b: m[0].numpy().astype(bool) for b, m in out.masks.items()}
    pixels = view_pixels(view[0], s)
    rows = choose_rows(pixels.shape[0], frames)
    source = plan.indices[0]
    labels = [f"frame {int(source[t])}" for t in rows]
    title = f"{os.path.basename(path)}: {predictor.describe()['setting']}"
    image = render_token_grid(pixels, masks, predictor.patch_size, output, rows=rows, frame_labels=labels,
                              title=title, grid=grid)
    animation = None
    if gif:
        animation = render_token_gif(pixels, masks, predictor.patch_size, gif, rows=rows, frame_labels=labels,
                                     title=title, grid=grid)
    agg, probs = scores_and_probs(out.logits, str(predictor.cfg.TEST.AGGREGATION))
    total = int(next(iter(masks.values())).size) if masks else 0
    stages = []
    for b in sorted(masks):
        m = masks[b]
        stages.append({"block": b, "kept": int(m.sum()), "total": int(m.size),
                       "fraction": round(float(m.sum()) / max(1, m.size), 6),
                       "kept_per_frame": m.sum(axis=1).astype(int).tolist()})
    return {**predictor.describe(), "video": path, "output": image["path"], "gif": animation["path"] if animation
            else None, "image": image, "animation": animation, "frames": [int(source[t]) for t in rows],
            "clip_frames": [int(i) for i in source], "patch_tokens": total, "stages": stages,
            "topk": top_k(agg, predictor.label_names, 5, probs),
            "gflops_per_view": round(float(out.gflops[0]), 6) if out.gflops is not None else None,
            "dense_gflops_per_view": dense_gflops_per_view(predictor), "warnings": list(predictor.warnings) + (
                [f"{path} has {plan.num_frames} frames but a clip spans {math.ceil(plan.span)}: its last frame is "
                 "repeated to fill the clip"] if plan.num_frames < plan.span else [])}
