"""Video data: annotation readers, decoding with timeouts, the official test-time sampling, the dataset,
and the synthetic action benchmark. See `dataset.py` for the item and batch layouts."""
from .annotations import VideoRecord, detect_format, read_annotation, write_annotation
from .dataset import ClipSettings, VideoClipDataset, build_dataset, build_loader, collate_views
from .decoding import read_frames
from .sampling import protocol_clip_indices

__all__ = [
    "VideoRecord", "detect_format", "read_annotation", "write_annotation",
    "ClipSettings", "VideoClipDataset", "build_dataset", "build_loader", "collate_views",
    "read_frames", "protocol_clip_indices",
]
