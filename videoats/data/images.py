"""Image data for evaluating the image models: an ImageNet-style folder, read as torchvision's ImageFolder and
timm read it, with a model's published test transform.

Two layouts of `<data dir>/<split>`:
- `<class>/<image>`: one folder per class, classes in sorted order (ImageFolder's class indices);
- a flat folder of images with a labels list (`<data dir>/<annotation>`, one `<file name> <label>` a line, the
  label a class index or a class name; with DATA.LABELS_FILE naming the classes).
Items and batches have the video dataset's layout (`video` holds the images, one view each), so evaluation
runs its one loop, metrics, coverage report and results file on both; an unreadable image is reported in
`failed`, never replaced.
"""
from __future__ import annotations

import os
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import VideoATSError
from ..models.registry import ImageTransform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def apply_test_transform(image: Image.Image, transform: ImageTransform, mean: Sequence[float],
                   std: Sequence[float]) -> torch.Tensor:
    """A PIL image -> (3, size, size) float, as torchvision's Resize / CenterCrop / ToTensor / Normalize do it
    (PIL's resampling): the short side to `transform.resize` (the other side int(long * resize / short)) and
    the centre crop (offsets round((H - size) / 2)), or the whole image to size x size without a crop."""
    image = image.convert("RGB")
    w, h = image.size
    size, resample = transform.size, _FILTERS[transform.interpolation]
    if transform.crop_fraction is None:
        image = image.resize((size, size), resample)
    else:
        short = transform.resize
        new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        if new != (w, h):
            image = image.resize(new, resample)
        w, h = image.size
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _class_names(labels_file: str) -> Optional[List[str]]:
    if not labels_file:
        return None
    if not os.path.isfile(labels_file):
        raise VideoATSError(f"DATA.LABELS_FILE not found: {labels_file} (one class name a line)")
    with open(labels_file) as f:
        return [line.strip() for line in f if line.strip()]


def _images_under(root: str) -> List[str]:
    """The images anywhere below a class folder, subfolders included (as torchvision's ImageFolder finds
    them), in a stable order."""
    found = []
    for where, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(where, f) for f in sorted(files) if _is_image(f)]
    return found


def scan_images(folder: str, annotation: str, labels_file: str = "") -> Tuple[List[Tuple[str, int]], List[str]]:
    """(image path, class index) pairs in a stable order, and the class names (module docstring's layouts)."""
    if not os.path.isdir(folder):
        raise VideoATSError(f"image folder not found: {folder} (DATA.PATH_TO_DATA_DIR/<TEST.SPLIT>)")
    names = _class_names(labels_file)
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if classes:  # one folder per class
        names = names or classes
        missing = [c for c in classes if c not in names]
        if missing:
            raise VideoATSError(f"class folder(s) {missing[:3]} of {folder} are not in DATA.LABELS_FILE")
        items = [(path, names.index(c)) for c in classes for path in _images_under(os.path.join(folder, c))]
    else:  # flat, with a labels list
        if not os.path.isfile(annotation):
            raise VideoATSError(f"{folder} has no class folders and no labels list {annotation}: give "
                                "<class>/<image> folders, or a file of '<file name> <label>' lines")
        items, named = [], []
        with open(annotation) as f:
            for number, line in enumerate(f, 1):
                parts = line.strip().rsplit(None, 1)
                if not parts:
                    continue
                if len(parts) != 2:
                    raise VideoATSError(f"{annotation}:{number}: expected '<file name> <label>', got {line.strip()!r}")
                items.append((os.path.join(folder, parts[0]), parts[1]))
                named.append(parts[1])
        if names is None:
            names = sorted(set(n for n in named if not n.isdigit())) or [str(i) for i in
                                                                         range(max(int(n) for n in named) + 1)]
        items = [(p, int(l) if l.isdigit() else names.index(l) if l in names else -1) for p, l in items]
        bad = [p for p, l in items if not 0 <= l < len(names)]
        if bad:
            raise VideoATSError(f"{annotation}: labels of {len(bad)} images (e.g. {os.path.basename(bad[0])}) name "
                                f"no class of {len(names)}")
    if not items:
        raise VideoATSError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...)")
    return items, names


class ImageRecord(NamedTuple):
    path: str
    label: int


class ImageFolderDataset(Dataset):
    """One item per image: `video` (3, size, size) after the test transform, with the video dataset's keys
    (an image is a video of one view for the evaluation's bookkeeping)."""

    crops_per_video = 1
    clips_per_video = 1
    views_per_video = 1

    def __init__(self, items: List[Tuple[str, int]], label_names: List[str], transform: ImageTransform,
                 mean: Sequence[float], std: Sequence[float]):
        self.items, self.label_names = items, label_names
        self.transform, self.mean, self.std = transform, tuple(mean), tuple(std)

    @property
    def videos(self) -> List[ImageRecord]:
        return [ImageRecord(p, l) for p, l in self.items]

    @property
    def num_videos(self) -> int:
        return len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, label = self.items[index]
        item = {"label": label, "video_index": index, "clip_index": 0, "crop_index": 0}
        try:
            with Image.open(path) as image:
                return {**item, "video": apply_test_transform(image, self.transform, self.mean, self.std)}
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            s = self.transform.size
            return {**item, "video": torch.empty(0, 3, s, s), "failed": {
                "video_index": index, "clip_index": 0, "path": path, "reason": "unreadable image",
                "detail": str(e).splitlines()[0][:200] if str(e) else type(e).__name__}}


def collate_images(items: Sequence[dict]) -> dict:
    """Items -> a batch in `collate_views`' layout, `video` (V, 3, H, W), one view per readable image."""
    good = [i for i in items if not i.get("failed")]
    long = lambda key: torch.tensor([int(i[key]) for i in good], dtype=torch.long)  # noqa: E731
    return {"video": torch.stack([i["video"] for i in good]) if good else torch.empty(0),
            "label": long("label"), "video_index": long("video_index"), "clip_index": long("clip_index"),
            "crop_index": long("crop_index"), "failed": [i["failed"] for i in items if i.get("failed")]}


def build_image_dataset(cfg, split: str, transform: ImageTransform, mean, std) -> ImageFolderDataset:
    """The image folder `DATA.PATH_TO_DATA_DIR/<split>` (labels list for a flat folder: the split's annotation
    file, DATA.<SPLIT>_ANNOTATION, as for videos: DATA.VAL_ANNOTATION for TEST.SPLIT val) with `transform`."""
    root = cfg.DATA.PATH_TO_DATA_DIR
    annotation = cfg.DATA[f"{split.upper()}_ANNOTATION"]
    items, names = scan_images(os.path.join(root, split), os.path.join(root, annotation), cfg.DATA.LABELS_FILE)
    return ImageFolderDataset(items, names, transform, mean, std)
