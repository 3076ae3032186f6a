"""`videoats models`: the registry, with each architecture's input and size."""
from __future__ import annotations

import torch

from ..cli import add_common


def register(sub) -> None:
    p = add_common(sub.add_parser("models", help="list the registered models",
                                  description="List the registered models with their input size and parameters."))
    p.add_argument("pattern", nargs="?", default=None, help="a glob, e.g. 'timesformer*'")
    p.set_defaults(func=run, human=human)


def describe(name: str) -> dict:
    from ..models import create_model

    with torch.device("meta"):  # shapes only: instant, no memory
        model = create_model(name)
    video = getattr(model, "is_video", False)
    size = model.img_size if video else model.patch_embed.img_size[0]
    return dict(
        name=name, kind="video" if video else "image", frames=model.num_frames if video else None,
        img_size=size, num_classes=getattr(model, "num_classes", None), depth=model.depth,
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        input=f"(B, 3, {model.num_frames}, {size}, {size})" if video else f"(B, 3, {size}, {size})",
    )


def run(args) -> dict:
    from ..models import list_models

    return dict(models=[describe(n) for n in list_models(args.pattern)])


def human(result: dict) -> str:
    lines = [f"{'model':<26} {'kind':<6} {'input':<24} {'classes':>7} {'params (M)':>10}"]
    for m in result["models"]:
        lines.append(f"{m['name']:<26} {m['kind']:<6} {m['input']:<24} {m['num_classes']:>7} {m['params_m']:>10.2f}")
    return "\n".join(lines)
