"""The map-style video dataset the trainer and the evaluator share.

A test item is one (video, temporal clip) with all its spatial crops: the clip's frames are decoded once
and cropped S times, which is where most of the loading speed comes from. `collate_views` flattens items
into a batch of views. Train and val items are single views.

Bad videos: test and val items are never replaced; they come back with `failed` set and `collate_views`
lists them, so that the evaluation can report expected vs evaluated videos. Training replaces a bad
video by another one chosen deterministically from (seed, index) and logs it (logger `videoats.data`).

DistributedSampler works as with any map-style dataset. Note that it pads the index list by repeating
indices so that every rank gets the same count: the union over ranks covers every (video, clip, crop), and
a few appear twice; evaluation de-duplicates by (video_index, clip_index, crop_index).
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import VideoATSError
from .annotations import Annotation, VideoRecord, read_annotation
from .decoding import DecodeFailure, read_frames, refuse_truncated
from .sampling import (normalize, protocol_clip_indices, random_clip_indices, resize_short_side, spatial_crops,
                       train_transform)

logger = logging.getLogger("videoats.data")

SPLITS = ("train", "val", "test")
TRAIN_RETRIES = 20


@dataclass(frozen=True)
class ClipSettings:
    """Everything a dataset needs from the config, so that it pickles cheaply into DataLoader workers."""

    num_frames: int = 8
    sampling_rate: int = 32
    target_fps: float = 30.0
    train_jitter_scales: Sequence[int] = (256, 320)
    train_crop_size: int = 224
    test_crop_size: int = 224
    random_flip: bool = True
    mean: Sequence[float] = (0.45, 0.45, 0.45)
    std: Sequence[float] = (0.225, 0.225, 0.225)
    num_clips: int = 1
    num_crops: int = 3
    clip_sampling: str = "official"
    decoder: str = "decord"
    decode_short_side: int = 0
    decode_timeout: float = 60.0
    decode_threads: int = 1
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg) -> "ClipSettings":
        d = cfg.DATA
        return cls(
            num_frames=int(d.NUM_FRAMES), sampling_rate=int(d.SAMPLING_RATE), target_fps=float(d.TARGET_FPS),
            train_jitter_scales=tuple(int(s) for s in d.TRAIN_JITTER_SCALES),
            train_crop_size=int(d.TRAIN_CROP_SIZE), test_crop_size=int(d.TEST_CROP_SIZE),
            random_flip=bool(d.RANDOM_FLIP), mean=tuple(d.MEAN), std=tuple(d.STD),
            num_clips=int(cfg.TEST.NUM_ENSEMBLE_VIEWS), num_crops=int(cfg.TEST.NUM_SPATIAL_CROPS),
            clip_sampling=str(cfg.TEST.CLIP_SAMPLING), decoder=str(d.DECODER),
            decode_short_side=int(d.DECODE_SHORT_SIDE), decode_timeout=float(d.DECODE_TIMEOUT),
            decode_threads=int(d.get("DECODE_THREADS", 1)), seed=int(cfg.SEED),
        )


class VideoClipDataset(Dataset):
    """Items are dicts; see the module docstring and `collate_views` for their layout."""

    def __init__(self, videos: Sequence[VideoRecord], label_names: Sequence[str], split: str,
                 settings: ClipSettings = ClipSettings(), annotation: Optional[Annotation] = None):
        if split not in SPLITS:
            raise VideoATSError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        self.videos: List[VideoRecord] = list(videos)
        self.label_names: List[str] = list(label_names)
        self.split = split
        self.settings = settings
        self.annotation = annotation
        self._known_bad: Dict[int, str] = {}
        self._train_transform = None

    # ------------------------------------------------------------------ sizes

    @property
    def num_videos(self) -> int:
        return len(self.videos)

    @property
    def clips_per_video(self) -> int:
        return self.settings.num_clips if self.split == "test" else 1

    @property
    def crops_per_video(self) -> int:
        return self.settings.num_crops if self.split == "test" else 1

    @property
    def views_per_video(self) -> int:
        return self.clips_per_video * self.crops_per_video

    @property
    def crop_size(self) -> int:
        return self.settings.test_crop_size if self.split == "test" else self.settings.train_crop_size

    def __len__(self) -> int:
        return self.num_videos * self.clips_per_video

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.split == "train":
            return self._train_item(index)
        video_index, clip_index = divmod(index, self.clips_per_video)
        return self._eval_item(video_index, clip_index)

    # ------------------------------------------------------------------ decoding

    def _decode(self, record: VideoRecord, pick):
        s = self.settings
        return read_frames(record.path, pick, backend=s.decoder, short_side=s.decode_short_side,
                           timeout=s.decode_timeout, num_threads=s.decode_threads)

    # ------------------------------------------------------------------ test / val

    def _eval_item(self, video_index: int, clip_index: int) -> dict:
        s = self.settings
        record = self.videos[video_index]
        if self.split == "test":
            num_clips, mode, crops = s.num_clips, s.clip_sampling, s.num_crops
        else:  # val: one centred clip, one centre crop, for a quick clip-level score
            num_clips, mode, crops = 1, "centered", 1

        def pick(video_len: int, fps: float) -> np.ndarray:
            return protocol_clip_indices(video_len, s.num_frames, s.sampling_rate, fps, s.target_fps,
                                         clip_index, num_clips, mode)

        item = {"label": record.label, "video_index": video_index, "clip_index": clip_index}
        try:
            frames, _, meta = self._decode(record, pick)
            refuse_truncated(meta)
        except DecodeFailure as e:
            logger.warning("%s video %d (%s) not evaluated: %s", self.split, video_index, record.path, e)
            item.update(video=torch.empty(0, 3, s.num_frames, self.crop_size, self.crop_size),
                        crop_index=torch.empty(0, dtype=torch.long),
                        failed={"video_index": video_index, "clip_index": clip_index, "path": record.path,
                                "reason": e.reason, "detail": e.detail})
            return item
        # protocol order: float, /255, normalise, resize the short side, crop
        video = normalize(torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous(), s.mean, s.std, channel_dim=0)
        if self.split == "test":
            views = spatial_crops(video, s.test_crop_size, crops)
        else:
            views = spatial_crops(resize_short_side(video, s.train_jitter_scales[0]), s.train_crop_size, 1)
        item.update(video=views.contiguous(), crop_index=torch.arange(views.shape[0]), failed=None)
        return item

    # ------------------------------------------------------------------ train

    def _train_item(self, index: int) -> dict:
        s = self.settings
        if self._train_transform is None:
            self._train_transform = train_transform(s.train_jitter_scales, s.train_crop_size, s.random_flip)

        def pick(video_len: int, fps: float) -> np.ndarray:
            return random_clip_indices(video_len, s.num_frames, s.sampling_rate, fps, s.target_fps)

        candidate = index
        for attempt in range(TRAIN_RETRIES + 1):
            record = self.videos[candidate]
            reason = self._known_bad.get(candidate)
            if reason is None:
                try:
                    frames, _, _ = self._decode(record, pick)
                    video = self._train_transform(torch.from_numpy(frames).permute(0, 3, 1, 2))
                    video = normalize(video, s.mean, s.std, channel_dim=1).permute(1, 0, 2, 3).contiguous()
                    return {"video": video, "label": record.label, "video_index": candidate,
                            "clip_index": 0, "crop_index": 0}
                except DecodeFailure as e:
                    reason = self._known_bad[candidate] = str(e)
            replacement = self.replacement_index(index, attempt)
            logger.warning("train video %d (%s) unusable (%s); using video %d instead",
                           candidate, record.path, reason, replacement)
            candidate = replacement
        raise VideoATSError(f"{TRAIN_RETRIES + 1} training videos in a row could not be decoded (last: "
                            f"{self.videos[candidate].path}); run `videoats check-videos` on the annotation")

    def replacement_index(self, index: int, attempt: int) -> int:
        """The `attempt`-th substitute for video `index`: a walk from a start drawn from (seed, index).

        Deterministic, so a run can be repeated with the same substitutes, and without repeats, so that a
        good video is found within as many attempts as there are bad ones in a row.
        """
        if self.num_videos == 1:
            return 0
        offset = random.Random(f"{self.settings.seed}:{index}").randrange(1, self.num_videos)
        step = 1 + (offset - 1 + attempt) % (self.num_videos - 1)  # 1..N-1: never the video itself
        return (index + step) % self.num_videos


# ---------------------------------------------------------------------------------------------- batches


def collate_views(items: Sequence[dict]) -> dict:
    """Items -> one batch of views.

    Returns `video` (V, C, T, H, W) float, and `label`, `video_index`, `clip_index`, `crop_index` as (V,)
    long tensors, plus `failed`: a list of `{video_index, clip_index, path, reason, detail}` for items that
    could not be decoded (they contribute no views). Works for train, val and test items alike.
    """
    videos, labels, video_idx, clip_idx, crop_idx, failed = [], [], [], [], [], []
    for item in items:
        if item.get("failed"):
            failed.append(item["failed"])
        video = item["video"]
        crops = item["crop_index"]
        if video.dim() == 4:
            video = video.unsqueeze(0)
            crops = torch.tensor([int(crops)])
        count = video.shape[0]
        videos.append(video)
        labels += [int(item["label"])] * count
        video_idx += [int(item["video_index"])] * count
        clip_idx += [int(item["clip_index"])] * count
        crop_idx.append(torch.as_tensor(crops, dtype=torch.long).reshape(-1))
    return {
        "video": torch.cat(videos) if videos else torch.empty(0),
        "label": torch.tensor(labels, dtype=torch.long),
        "video_index": torch.tensor(video_idx, dtype=torch.long),
        "clip_index": torch.tensor(clip_idx, dtype=torch.long),
        "crop_index": torch.cat(crop_idx) if crop_idx else torch.empty(0, dtype=torch.long),
        "failed": failed,
    }


# ---------------------------------------------------------------------------------------------- config


def under_data_dir(folder: str, path: str) -> str:
    """A config path (annotation, labels, prefix): absolute as given, else relative to the data folder."""
    if not path:
        return folder
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) or not folder else os.path.join(folder, path)


def annotation_path(cfg, split: str) -> str:
    """DATA.<SPLIT>_ANNOTATION under DATA.PATH_TO_DATA_DIR; a `<dir>/<split>` class tree for folders."""
    if split not in SPLITS:
        raise VideoATSError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    root = os.path.expanduser(cfg.DATA.PATH_TO_DATA_DIR)
    path = under_data_dir(root, cfg.DATA[f"{split.upper()}_ANNOTATION"])
    if cfg.DATA.ANNOTATION_FORMAT in ("auto", "folders") and not os.path.exists(path):
        tree = under_data_dir(root, split)
        if os.path.isdir(tree):
            return tree
    return path


def load_annotation(cfg, split: str, annotation: Optional[str] = None) -> Annotation:
    root = os.path.expanduser(cfg.DATA.PATH_TO_DATA_DIR)
    source = annotation or annotation_path(cfg, split)
    prefix = under_data_dir(root, cfg.DATA.PATH_PREFIX) if cfg.DATA.PATH_PREFIX else root
    labels = under_data_dir(root, cfg.DATA.LABELS_FILE) if cfg.DATA.LABELS_FILE else ""
    return read_annotation(source, cfg.DATA.ANNOTATION_FORMAT, prefix=prefix, labels_file=labels, split=split)


def build_dataset(cfg, split: str, annotation: Optional[str] = None) -> VideoClipDataset:
    """The dataset of `split` (train | val | test) as the config describes it."""
    ann = load_annotation(cfg, split, annotation)
    if not ann.records:
        raise VideoATSError(f"{ann.source}: lists no videos")
    return VideoClipDataset(ann.records, ann.label_names, split, ClipSettings.from_cfg(cfg), annotation=ann)


def build_loader(dataset: VideoClipDataset, batch_size: int, *, shuffle: bool = False, num_workers: int = 0,
                 sampler=None, drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader with `collate_views`; batch_size counts items (a test item holds all its crops)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=num_workers, collate_fn=collate_views, drop_last=drop_last,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0)
