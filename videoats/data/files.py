"""Which files are videos: expanding folders into video files, and telling a damaged video from a file that
never was one (`classify_failure`). `infer` and `check-videos` read these; a dataset folder tree uses the
same extensions."""
from __future__ import annotations

import os
from typing import Iterable, List, Tuple

from .decoding import DecodeFailure, run_with_timeout

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
                    ".ts", ".mts", ".ogv", ".gif")


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
