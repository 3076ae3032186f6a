"""Video data: annotation readers, decoding with timeouts, the official test-time sampling, the dataset,
and the synthetic action benchmark. See `dataset.py` for the item and batch layouts."""
from .annotations import Annotation, VideoRecord, detect_format, read_annotation, write_annotation
from .dataset import (ClipSettings, VideoClipDataset, annotation_path, build_dataset, build_loader, collate_views,
                      load_annotation)
from .decoding import DecodeFailure, VideoMeta, read_frames, read_meta
from .sampling import protocol_clip_indices, random_clip_indices, spatial_crops

__all__ = [
    "Annotation", "VideoRecord", "detect_format", "read_annotation", "write_annotation",
    "ClipSettings", "VideoClipDataset", "annotation_path", "build_dataset", "build_loader", "collate_views",
    "load_annotation", "DecodeFailure", "VideoMeta", "read_frames", "read_meta",
    "protocol_clip_indices", "random_clip_indices", "spatial_crops", "make_synthetic",
]


def make_synthetic(*args, **kwargs):
    """See `videoats.data.synthetic.make_synthetic` (imported lazily: it is not needed to load data)."""
    from .synthetic import make_synthetic as _make

    return _make(*args, **kwargs)
