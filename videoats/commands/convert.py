"""`videoats convert SRC OUT --model NAME`: any checkpoint layout videoats reads -> a videoats checkpoint.

The weights go through the same strict loader as everything else, so a converted file is known to fit
the named model; the label names and a config that rebuilds the model travel inside it.
"""
from __future__ import annotations

import os

from ._args import add_common
from ..checkpoint import inspect_checkpoint, load_checkpoint, save_checkpoint
from ..config import config_from_yaml, get_cfg
from ..data.annotations import read_labels_file
from ..errors import VideoATSError
from ..models import create_model, family_of
from ..paths import declare_outputs


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert an official TimeSformer/X-ViT, Hugging Face or timm checkpoint to videoats",
        description="Load SRC (official TimeSformer .pyth, Hugging Face folder/file, official X-ViT .pth, timm "
                    "ViT weights or a videoats checkpoint) into model NAME and write it to OUT as a videoats "
                    "checkpoint (.safetensors with metadata; .pt keeps a torch dict).")
    p.add_argument("src", metavar="SRC", help="checkpoint file or Hugging Face model folder")
    p.add_argument("out", metavar="OUT", help="output file, ending in .safetensors (or .pt)")
    p.add_argument("--model", required=True, metavar="NAME", help="registered model name (see `videoats models`)")
    p.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="class count (default: the checkpoint's)")
    p.add_argument("--reset-head", action="store_true",
                   help="accept a checkpoint with another class count and start a new head")
    p.add_argument("--labels", metavar="FILE", help="label names, one a line, in class-index order")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    add_common(p)
    declare_outputs(p, out="file")
    p.set_defaults(func=run, human=fmt)


def _config_text(source_config, model_name: str, num_classes) -> str:
    """The source's config (if it is ours) with the model name and class count of what is written."""
    cfg = get_cfg()
    if isinstance(source_config, str) and source_config.strip():
        try:
            cfg = config_from_yaml(source_config)
        except VideoATSError:  # a foreign or stale config: start from the defaults
            cfg = get_cfg()
    cfg.MODEL.NAME = model_name
    if num_classes:
        cfg.MODEL.NUM_CLASSES = int(num_classes)
    return cfg.dump()


def run(args) -> dict:
    out = args.out
    if not out.endswith((".safetensors", ".pt", ".pth")):
        raise VideoATSError(f"output {out} must end in .safetensors (or .pt / .pth for a torch file)")
    if os.path.exists(out) and not args.force:
        raise VideoATSError(f"output {out} exists; pass --force to overwrite it")
    info = inspect_checkpoint(args.src)
    labels = read_labels_file(args.labels) if args.labels else info["metadata"].get("label_names")
    num_classes = args.num_classes
    if num_classes is None and args.labels:
        num_classes = len(labels)
    if num_classes is None and info["family"] != "vit":
        num_classes = info["num_classes"]  # keep the checkpoint's classes unless told otherwise
    model = create_model(args.model, num_classes=num_classes)
    if (num_classes is None and info["num_classes"] and not family_of(model).is_video
            and getattr(model, "num_classes", None) != info["num_classes"]):
        model = create_model(args.model, num_classes=info["num_classes"])  # image weights into an image model
    report = load_checkpoint(model, args.src, allow_head_reset=args.reset_head)
    n = getattr(model, "num_classes", None)
    if labels is not None and n and len(labels) != n:
        if args.labels:
            raise VideoATSError(f"labels file {args.labels} has {len(labels)} names but the model has {n} classes")
        labels = None  # the checkpoint's labels belong to the head that was replaced
    config = _config_text(info["metadata"].get("config"), args.model, n)
    save_checkpoint(out, model, config=config, label_names=labels)
    return {"src": info["path"], "out": out, "model": args.model, "num_classes": n,
            "label_names": len(labels) if labels else 0, "report": report.to_dict()}


def fmt(result: dict) -> str:
    rep = result["report"]
    lines = [f"wrote {result['out']} ({result['model']}, {result['num_classes']} classes) from {result['src']}",
             f"  source format: {rep['source_format']}; mapped {len(rep['mapped'])} tensors"]
    for name in ("resized", "initialized"):
        for k, how in rep[name].items():
            lines.append(f"  {name}: {k}: {how}")
    if rep["ignored"]:
        lines.append(f"  ignored (unused by the original too): {', '.join(rep['ignored'])}")
    if not result["label_names"]:
        lines.append("  no label names stored (give --labels FILE to keep them)")
    return "\n".join(lines)
