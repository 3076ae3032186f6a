"""Multi-view evaluation: config + checkpoint + dataset -> video-level metrics, coverage, GFLOPs, files.

Why it is built this way:
- Views are forwarded in chunks of TEST.BATCH_SIZE whatever the loader batch, so memory stays bounded for
  any protocol (HR 16x448 at 1x3, 10x3, ...), unlike chunking that only works at batch 1.
- Every process keeps per-view logits keyed by (video, clip, crop) in a `runner.ViewTable`; they are gathered,
  de-duplicated (DistributedSampler repeats items to even out ranks) and aggregated in key order, so 1 and N
  processes give the same metrics.
- Videos that cannot be decoded are never replaced: they are listed in `coverage` and metrics say over how
  many videos they were computed, because incomplete Kinetics copies silently lower accuracy.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from typing import List, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from .. import zoo
from ..checkpoint import load_weights
from ..data import build_dataset, build_loader
from ..data.images import build_image_dataset, collate_images
from ..errors import VideoATSError
from ..flops import dense_gflops
from ..models.build import build_from_cfg
from ..models.registry import ImageTransform, family_of_name
from ..paths import check_output_dir, require_data_dir
from ..runner import Runner, merge
from ..runtime import compiled_for_inference, inference_autocast, rank_world, resolve_device
from . import report as reports


# ---------------------------------------------------------------------------------------------- setup


def _norm_label(name: str) -> str:
    return str(name).strip().lower().replace("_", " ")


def _check_labels(label_names: List[str], num_classes: int, ckpt_labels) -> None:
    if len(label_names) != num_classes:
        raise VideoATSError(
            f"the dataset names {len(label_names)} classes but the model has {num_classes} outputs; set "
            f"MODEL.NUM_CLASSES {len(label_names)}, or DATA.LABELS_FILE to the full class list so that class "
            "indices match the checkpoint")
    if ckpt_labels:
        ours, theirs = [_norm_label(n) for n in label_names], [_norm_label(n) for n in ckpt_labels]
        if ours != theirs:
            i = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            a = label_names[i] if i < len(label_names) else "<none>"
            b = ckpt_labels[i] if i < len(ckpt_labels) else "<none>"
            raise VideoATSError(
                f"class {i} is {a!r} in the dataset but {b!r} in the checkpoint: the label order differs; set "
                "DATA.LABELS_FILE to the checkpoint's class list")


def _label_order(cfg, checkpoint: Optional[str], named: bool, zoo_name: Optional[str]) -> dict:
    """Where the order of the model's outputs comes from, said once in the results file: the checkpoint's
    own names, the zoo's label map for these weights (both checked against the dataset's class list), or,
    when neither names them, the dataset's class list assumed."""
    ours = (f"DATA.LABELS_FILE ({cfg.DATA.LABELS_FILE})" if cfg.DATA.LABELS_FILE else
            "the sorted label names of the annotation")
    if named:
        return {"source": "checkpoint", "note": "the checkpoint names its classes; the dataset's order matches"}
    if zoo_name:
        return {"source": "zoo", "note": f"zoo weights {zoo_name} follow the {zoo.entry(zoo_name).labels} label "
                                         "map; the dataset's order matches"}
    what = "the checkpoint names no classes" if checkpoint else "no checkpoint"
    return {"source": "assumed", "note": f"{what}: its outputs are assumed to follow the dataset's class "
                                         f"order, {ours}"}


def _meta(report, key):
    meta = getattr(report, "metadata", None)
    if meta is None and isinstance(report, dict):
        meta = report.get("metadata", report)
    return (meta or {}).get(key)


# ---------------------------------------------------------------------------------------------- the loop


def _merge_failed(parts: List[List[dict]]) -> List[dict]:
    seen = {}
    for items in parts:
        for f in items:
            seen.setdefault((int(f["video_index"]), int(f.get("clip_index", 0))), f)
    return [seen[k] for k in sorted(seen)]


def _loader_views(loader, failed: List[dict], progress: bool, rank: int):
    """The loader's (views, (video, clip, crop) keys, labels) for `Runner.collect`; videos that could not be
    decoded go to `failed`, never replaced."""
    bar = None
    if progress and rank == 0 and sys.stderr.isatty():
        # some pseudo-terminals report 0 columns, which makes tqdm draw nothing
        bar = tqdm(total=len(loader), desc="eval", unit="batch", file=sys.stderr,
                   ncols=min(120, shutil.get_terminal_size((100, 20)).columns))
    try:
        for batch in loader:
            failed.extend(batch["failed"])
            if batch["video"].numel():
                keys = torch.stack([batch["video_index"], batch["clip_index"], batch["crop_index"]], dim=1)
                yield batch["video"], keys, batch["label"]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------------------------- evaluate


def evaluate(cfg, checkpoint: Optional[str] = None, output_dir: Optional[str] = None, progress: bool = True) -> dict:
    """Multi-view test of the config's model with `checkpoint` (default TEST.CHECKPOINT_FILE).

    Every input problem is raised as VideoATSError before any video is decoded. Under torch.distributed each
    process evaluates its shard and every process returns the same results; only rank 0 writes files
    (to `output_dir`, default cfg.OUTPUT_DIR; empty string: write nothing). The output folder is checked
    before any video is decoded; if the final write still fails (disk full, folder removed), the results
    come back with `error` saying so, rather than being lost.
    """
    started = time.perf_counter()
    rank, world = rank_world()
    warnings: List[str] = []
    if checkpoint is None:
        checkpoint = cfg.TEST.CHECKPOINT_FILE or None
    checkpoint = zoo.resolve(checkpoint) if checkpoint else checkpoint  # zoo:NAME -> the cached file
    if checkpoint and not os.path.exists(checkpoint):
        raise VideoATSError(f"checkpoint not found: {checkpoint} (give --checkpoint or TEST.CHECKPOINT_FILE)")
    out = cfg.OUTPUT_DIR if output_dir is None else output_dir
    if out and rank == 0:
        check_output_dir(out, "--output" if output_dir else "OUTPUT_DIR")
    if cfg.DATA.PATH_TO_DATA_DIR:
        require_data_dir(cfg)
    split = cfg.TEST.SPLIT
    family = family_of_name(cfg.MODEL.NAME)
    images = not family.is_video
    if images:  # an image folder, with the model's published test transform (its family record)
        size = int(cfg.DATA.TEST_CROP_SIZE)
        transform = family.image_transform(size) if family.image_transform else ImageTransform(size)
        dataset = build_image_dataset(cfg, split, transform, family.mean, family.std)
    else:
        dataset = build_dataset(cfg, split)
    net = build_from_cfg(cfg)
    report = load_weights(net, checkpoint, not_found=" (give --checkpoint or TEST.CHECKPOINT_FILE)",
                          fix="; use the config of the architecture it was saved from") if checkpoint else None
    if checkpoint is None:
        warnings.append("no checkpoint given: a randomly initialised model was evaluated")
    ckpt_labels = _meta(report, "label_names") if report is not None else None
    zoo_name = zoo.entry_for(checkpoint) if checkpoint and not ckpt_labels else None
    zoo_labels = zoo.label_names(zoo_name) if zoo_name else None
    named = ckpt_labels or zoo_labels
    # an image folder's classes are its sorted folders (ImageFolder's convention, which the published ImageNet
    # evaluations follow); folders that name no class of the checkpoint (ImageNet's WordNet ids against
    # "tench, Tinca tinca") are matched by that index, not refused
    folders, classes = {_norm_label(n) for n in dataset.label_names}, {_norm_label(n) for n in named or ()}
    by_index = bool(images and named) and not folders & classes
    _check_labels(dataset.label_names, int(getattr(net, "num_classes", len(dataset.label_names))),
                  None if by_index else named)
    if by_index:
        label_order = {"source": "index", "note": f"the image folder's {len(dataset.label_names)} classes in sorted "
                                                  "order are the checkpoint's class indices (its names, e.g. "
                                                  f"{named[0]!r}, are not the folders', e.g. "
                                                  f"{dataset.label_names[0]!r})"}
    else:
        label_order = _label_order(cfg, checkpoint, bool(ckpt_labels), zoo_name if zoo_labels else None)
    if not images and getattr(net, "num_frames", cfg.DATA.NUM_FRAMES) != cfg.DATA.NUM_FRAMES:
        name = getattr(net, "model_name", type(net).__name__)
        warnings.append(f"model {name} expects {net.num_frames} frames but DATA.NUM_FRAMES is "
                        f"{cfg.DATA.NUM_FRAMES}; its time embedding is interpolated")

    device = resolve_device(cfg)
    was_training = net.training
    net.to(device).eval()
    crop = int(cfg.DATA.TEST_CROP_SIZE)
    view_shape = (3, crop, crop) if images else (3, int(cfg.DATA.NUM_FRAMES), crop, crop)
    dense = float(dense_gflops(net, input_shape=view_shape))  # fvcore, on the view shape evaluated

    crops = dataset.crops_per_video
    batch_views = int(cfg.TEST.BATCH_SIZE)
    sampler = None
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    if images:
        workers = int(cfg.DATA.NUM_WORKERS)
        loader = DataLoader(dataset, batch_views, sampler=sampler, num_workers=workers, collate_fn=collate_images,
                            pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    else:
        loader = build_loader(dataset, max(1, math.ceil(batch_views / crops)), sampler=sampler,
                              num_workers=int(cfg.DATA.NUM_WORKERS), pin_memory=device.type == "cuda")
    runner = Runner(net, device, batch_views, forward=compiled_for_inference(net, bool(cfg.TEST.COMPILE)),
                    autocast=inference_autocast(str(cfg.TEST.PRECISION), device))
    failed: List[dict] = []
    try:
        table = runner.collect(_loader_views(loader, failed, progress, rank))
    finally:
        net.train(was_training)

    local = {"views": table.packed(), "failed": failed}
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, local)
    else:
        gathered = [local]
    views = merge([g["views"] for g in gathered])
    failed = _merge_failed([g["failed"] for g in gathered])

    doc, predictions = reports.results_document(reports.EvalRun(
        cfg=cfg, model=net, dataset=dataset, views=views, failed=failed, dense_gflops=dense, view_shape=view_shape,
        checkpoint=os.path.abspath(checkpoint) if checkpoint else None, load_report=report, world=world,
        device=str(device), warnings=warnings,
        image_transform=dict(size=transform.size, resize=transform.resize, crop_fraction=transform.crop_fraction,
                             interpolation=transform.interpolation, mean=list(family.mean), std=list(family.std))
        if images else None))
    doc["label_order"] = label_order
    doc["seconds"] = round(time.perf_counter() - started, 3)
    doc["runtime"] = dict(precision=str(cfg.TEST.PRECISION), compiled=bool(cfg.TEST.COMPILE))
    if out and rank == 0:
        try:
            doc["files"] = reports.write_outputs(doc, predictions, views, out)
        except OSError as e:
            doc["files"] = {}
            doc["error"] = f"the results could not be written to {out}: {e.strerror or e} (the metrics above " \
                           "are all that is left of this run)"
    return doc
