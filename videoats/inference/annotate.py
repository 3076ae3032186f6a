"""`infer --per-clip --out-video`: the video again, each frame labelled with the answer of the window it is
in (top label, its probability, the window's span), for a person to watch what the model said when.

Why re-decode instead of keeping frames: the answer for a window is known only after its last frame, and a
video of any length must not be held in memory; the second pass decodes, draws and encodes one frame at a
time. A frame belongs to the latest window that has started by it, counted in decoded frames (the windows
name the frames they used; frame timestamps may be missing, in a raw stream, or uneven). Frames are drawn
upright (the display matrix applied, as the model saw them) and keep their timestamps. H.264 in MP4, MKV or
MOV.
"""
from __future__ import annotations

import bisect
import os
from typing import List

from ..atomic import atomic_write
from ..data.decoding import display_rgb
from ..errors import VideoATSError
from .visualize import label_font

FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}


def check_video_output(path: str) -> str:
    """The container format for `path`, or VideoATSError naming the ones written."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise VideoATSError(f"--out-video {path}: name an {', '.join(FORMATS)} file")
    return FORMATS[ext]


def window_of(frames: List[int], starts: List[int]) -> List[int]:
    """For each decoded frame index, the index of the latest window whose first frame it is at or after (the
    first window before that)."""
    return [max(0, bisect.bisect_right(starts, i) - 1) for i in frames]


def write_annotated_video(source: str, answer: dict, output: str) -> dict:
    """Write `source` with the per-clip answers of `answer` drawn on its frames; returns what was written."""
    import av
    from PIL import Image, ImageDraw

    fmt = check_video_output(output)
    windows = answer["per_clip"]
    starts = [w["frame_indices"][0] for w in windows]
    texts = [f"{w['start_s']:.2f}-{w['end_s']:.2f} s: {w['topk'][0]['label']} {w['topk'][0]['score']:.2f}"
             for w in windows]
    counts = [0] * len(windows)

    def write(tmp: str) -> None:
        with av.open(source) as inp, av.open(tmp, "w", format=fmt) as out:
            stream = inp.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or 30
            encoder = font = None
            for index, frame in enumerate(inp.decode(stream)):
                image = Image.fromarray(display_rgb(frame))
                if encoder is None:  # H.264 in yuv420p needs even sizes
                    encoder = out.add_stream("libx264", rate=rate)
                    encoder.width, encoder.height = image.width // 2 * 2, image.height // 2 * 2
                    encoder.pix_fmt = "yuv420p"
                    encoder.options = {"crf": "20", "preset": "veryfast"}
                    if frame.pts is not None:  # the source's clock: uneven frame times stay uneven
                        encoder.codec_context.time_base = stream.time_base
                k = window_of([index], starts)[0]
                counts[k] += 1
                draw = ImageDraw.Draw(image)
                band = max(12, image.height // 14)
                if font is None:
                    font = label_font(max(8, int(band * 0.7)))
                draw.rectangle([0, 0, image.width, band], fill=(0, 0, 0))
                draw.text((band // 4, band * 0.12), texts[k], fill=(255, 255, 255), font=font)
                image = image.crop((0, 0, encoder.width, encoder.height))
                labelled = av.VideoFrame.from_image(image)
                if frame.pts is not None:
                    labelled.pts, labelled.time_base = frame.pts, stream.time_base
                for packet in encoder.encode(labelled):
                    out.mux(packet)
            if encoder is not None:
                for packet in encoder.encode():
                    out.mux(packet)

    atomic_write(output, write)
    return {"path": output, "frames": sum(counts), "frames_per_window": counts}
