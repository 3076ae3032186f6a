"""`videoats models`: the registry, with each architecture's input, size and published weights (zoo)."""
from __future__ import annotations

import torch

from .. import zoo
from ._args import add_common
from ..inference import shipped
from ..models import create_model, list_models


def register(sub) -> None:
    p = add_common(sub.add_parser(
        "models", help="list the registered models and their zoo weights",
        description="List the registered models with their input size and parameters, and the published weights "
                    "the zoo can download for them (create_model(name, pretrained=True), --checkpoint zoo:NAME), "
                    "with whether they are in the cache already, and the model shipped in the package "
                    "(--checkpoint demo)."))
    p.add_argument("pattern", nargs="?", default=None, help="a glob, e.g. 'timesformer*'")
    p.add_argument("--configs", action="store_true", help="also list the configs shipped with the package "
                                                          "(--config NAME)")
    p.set_defaults(func=run, human=human)


def describe(name: str) -> dict:
    # built on the meta device: shapes without memory or initialisation, so the 122M-parameter models
    # cost milliseconds instead of seconds each
    with torch.device("meta"):
        model = create_model(name)
    video = getattr(model, "is_video", False)
    size = model.img_size if hasattr(model, "img_size") else model.patch_embed.img_size[0]  # timm: its stem
    params = sum(p.numel() for p in model.parameters())
    return dict(
        name=name, kind="video" if video else "image", frames=model.num_frames if video else None,
        img_size=size, num_classes=getattr(model, "num_classes", None), depth=model.depth,
        params=params, params_m=round(params / 1e6, 2),
        input=f"(B, 3, {model.num_frames}, {size}, {size})" if video else f"(B, 3, {size}, {size})",
        zoo=[dict(name=n, cached=zoo.is_cached(n)) for n in zoo.names_for(name)],
    )


def zoo_table() -> list:
    return [dict(name=n, model=e.model, what=e.what, cached=zoo.is_cached(n), path=zoo.local_path(n),
                 urls=[url for _, url in e.files]) for n, e in zoo.ZOO.items()]


def run(args) -> dict:
    models = [describe(n) for n in list_models(args.pattern)]
    wanted = {m["name"] for m in models}
    result = dict(models=models, zoo=[z for z in zoo_table() if z["model"] in wanted], cache=zoo.home(),
                  shipped=[m for m in shipped.listing() if m["model"] in wanted])
    if args.configs:
        result["configs"] = shipped.config_names()
    return result


def human(result: dict) -> str:
    lines = [f"{'model':<24} {'kind':<6} {'input':<22} {'classes':>7} {'params (M)':>10}  zoo weights"]
    for m in result["models"]:
        cached = sum(z["cached"] for z in m["zoo"])
        weights = f"{len(m['zoo'])} ({cached} cached)" if m["zoo"] else "-"
        lines.append(f"{m['name']:<24} {m['kind']:<6} {m['input']:<22} {m['num_classes']:>7} "
                     f"{m['params_m']:>10.2f}  {weights}")
    if result["zoo"]:
        lines += ["", "zoo weights: create_model(model, pretrained=True) loads a model's first, "
                      f"--checkpoint zoo:NAME any; cache {result['cache']}",
                  f"  {'NAME':<30} {'model':<22} {'cached':<6}  what"]
        for z in result["zoo"]:
            lines.append(f"  {z['name']:<30} {z['model']:<22} {'yes' if z['cached'] else 'no':<6}  {z['what']}")
    if result.get("shipped"):
        lines += ["", "shipped with the package (no download): --checkpoint NAME, zoo:NAME or "
                      "videoats.Recognizer(NAME)"]
        for m in result["shipped"]:
            lines.append(f"  {m['name']:<30} {m['model']:<22} {m['classes']} classes: {m['what']}")
    if result.get("configs"):
        lines += ["", "configs shipped with the package (--config NAME):"] + [f"  {n}" for n in result["configs"]]
    return "\n".join(lines)
