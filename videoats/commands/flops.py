"""`videoats flops`: per-view and total GFLOPs of a model, dense or with ATS, in the fvcore convention.

A dense count needs no data: it is a function of the architecture and the view shape. An ATS count is a
function of the input too, so it runs real forward passes and prints the per-sample spread, plus the
padded-batch figure apart (what a batch really computes when its samples keep different numbers).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import torch

from .. import create_model, load_checkpoint
from .. import flops as fl
from ..ats.core import METHOD_NAMES, MODES
from ..config import get_cfg
from ..data import ClipSettings
from ..data.clips import parse_views
from ..data.decoding import DecodeFailure
from ..data.sampling import normalize
from ..data.synthetic import CLASS_NAMES, _scene, render_frames
from ..errors import VideoATSError
from ..flops import input_thw
from ..inference.predict import make_views, protocol_plan, read_clip_frames
from ..models import family_of_name
from ..models.build import view_config_from_model
from ..runner import Runner, ViewTable, gflops_summary
from ..summary import number_text, stats
from ._args import add_common, add_selection_args



def register(subparsers) -> None:
    p = subparsers.add_parser(
        "flops", help="GFLOPs per view and per clips x crops, dense or adaptive (ATS)",
        description="Count GFLOPs in the fvcore convention (1 multiply-add = 1 flop, LayerNorm and attention "
                    "matmuls counted, GELU/softmax/adds not), per view and times the views (clips x crops). "
                    "With ATS the count depends on the input: forward passes run on a synthetic video batch "
                    "(default), on video files, or on random noise (--input random), and the per-sample "
                    "mean/min/max and the padded-batch figure are printed.")
    p.add_argument("--model", required=True, help="registered model name (see `videoats models`)")
    p.add_argument("--views", default=None, metavar="CLIPSxCROPS",
                   help="test views for the total (default: 1x3 for video models, 1x1 for image models)")
    p.add_argument("--frames", type=int, help="frames per clip (default: the model's)")
    p.add_argument("--img-size", type=int, help="crop size in pixels (default: the model's)")
    p.add_argument("--num-classes", type=int, help="classes of the head (default: the model's)")
    p.add_argument("--counter", choices=("analytic", "fvcore", "both"), default="analytic",
                   help="analytic (instant), fvcore (traces the model), or both (default: analytic)")
    g = p.add_argument_group("adaptive token sampling")
    g.add_argument("--ats-blocks", metavar="I,J,...", help="0-based blocks that sample tokens, e.g. 4,5,6")
    g.add_argument("--ats-tokens", metavar="K[,K...]", help="token budget (count with CLS, or ratio <= 1), "
                                                            "one value or one per block (default: 1.0, all)")
    g.add_argument("--ats-variant", help="image, tube, frame or joint (default: tube for video, image for images)")
    g.add_argument("--ats-masked", action="store_true",
                   help="keep the masked layout (no pruning), as in training: nothing is saved")
    g.add_argument("--ats-mode", choices=MODES,
                   help="pruned layout: trim (pad to the batch's largest count; default) or static (widths from "
                        "the budget, no device read): the padded GFLOPs differ, the per-sample ones do not")
    add_selection_args(g)
    g.add_argument("--checkpoint", help="weights to load first (kept tokens depend on the weights)")
    g.add_argument("--input", nargs="+", default=["synthetic"], metavar="SOURCE",
                   help="'synthetic' (rendered motion clips, default), 'random' (normal noise), or video files")
    g.add_argument("--batches", type=int, default=1, help="batches to run for synthetic/random input (default: 1)")
    g.add_argument("--batch-size", type=int, default=4, help="samples per batch (default: 4)")
    g.add_argument("--seed", type=int, default=0)
    add_common(p)
    p.set_defaults(func=run, human=format_flops)


def _ints(text: str, what: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise VideoATSError(f"{what} {text!r}: give comma-separated integers, e.g. 4,5,6")


def _floats(text: str, what: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise VideoATSError(f"{what} {text!r}: give a number or comma-separated numbers")


def _ats_config(args) -> Optional[dict]:
    if not args.ats_blocks:
        if args.ats_tokens or args.ats_variant or args.ats_masked or args.ats_mode or args.ats_selection \
                or args.ats_seed is not None:
            raise VideoATSError("--ats-tokens/--ats-variant/--ats-masked/--ats-mode/--ats-selection/--ats-seed "
                                "need --ats-blocks")
        return None
    ats = dict(blocks=_ints(args.ats_blocks, "--ats-blocks"), drop_tokens=not args.ats_masked, tokens=1.0,
               mode=args.ats_mode or "trim", selection=args.ats_selection or "inverse_transform",
               seed=0 if args.ats_seed is None else args.ats_seed)
    if args.ats_tokens:
        tokens = _floats(args.ats_tokens, "--ats-tokens")
        ats["tokens"] = tokens[0] if len(tokens) == 1 else tokens
    if args.ats_variant:
        ats["variant"] = args.ats_variant
    return ats


def _build(args):
    kw: Dict[str, object] = {}
    image = not family_of_name(args.model).is_video
    if args.frames is not None:
        if args.frames < 1:
            raise VideoATSError(f"--frames must be at least 1, got {args.frames}")
        if image:
            raise VideoATSError(f"--frames: {args.model} is an image model")
        kw["num_frames"] = args.frames
    if args.img_size is not None:
        if args.img_size < 1:
            raise VideoATSError(f"--img-size must be positive, got {args.img_size}")
        kw["img_size"] = args.img_size
    if args.num_classes is not None and args.num_classes < 1:
        raise VideoATSError(f"--num-classes must be at least 1, got {args.num_classes}")
    ats = _ats_config(args)
    if ats is None and not args.checkpoint and args.counter == "analytic":
        with torch.device("meta"):  # an analytic count reads shapes only: no weights to initialise
            return create_model(args.model, num_classes=args.num_classes, **kw).eval()
    model = create_model(args.model, num_classes=args.num_classes, ats=ats, **kw)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint)
    return model.eval()


def _view_shape(model):
    t, h, w = input_thw(model, None)
    return (3, t, h, w) if getattr(model, "is_video", False) else (3, h, w)


def _clip_settings(model, shape, views):
    """The clip settings `videoats infer` uses for this model without a config (the default protocol at the
    view shape, the family's normalisation), so that a file's counts here are the ones `infer` reports for it."""
    cfg = get_cfg()
    view_config_from_model(cfg, model)
    cfg.DATA.NUM_FRAMES = shape[1] if len(shape) == 4 else 1  # --frames / --img-size resize the view
    cfg.DATA.TEST_CROP_SIZE = shape[-1]
    cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS = views
    return ClipSettings.from_cfg(cfg)


def _synthetic_batch(shape, batch: int, seed: int, settings):
    """Rendered motion clips (the synthetic benchmark's scenes) at the view size, normalised."""
    video = len(shape) == 4
    t, h, w = (shape[1], shape[2], shape[3]) if video else (1, shape[1], shape[2])
    clips = []
    for i in range(batch):
        rng = np.random.default_rng(seed * 100003 + i)
        scene = _scene(rng, CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))], h, w)
        frames = torch.from_numpy(render_frames(scene, max(t, 2))[:t])  # (T, H, W, 3) uint8
        x = normalize(frames.permute(3, 0, 1, 2), settings.mean, settings.std, channel_dim=0)  # (3, T, H, W)
        clips.append(x if video else x[:, 0])
    return torch.stack(clips)


def _file_batches(paths, shape, settings):
    """Every view (clip x crop) of every file, decoded, placed and cropped by the code `videoats infer`
    runs (`read_clip_frames` with the protocol's clip plan, then `make_views`)."""
    for path in paths:
        if not os.path.isfile(path):
            raise VideoATSError(f"--input {path!r}: no such file (or use 'synthetic' / 'random')")
        chunks = []
        try:
            for first, frames in read_clip_frames(path, settings, lambda n, fps: protocol_plan(settings, n, fps)):
                if first is not None:
                    chunks.append(make_views(frames, settings, settings.num_crops))
        except DecodeFailure as e:
            raise VideoATSError(f"--input {path!r}: cannot decode ({e})")
        views = torch.cat(chunks)
        yield path, views if len(shape) == 4 else views[:, :, 0]


def run(args) -> dict:
    model = _build(args)
    views = parse_views(args.views) if args.views else ((1, 3) if getattr(model, "is_video", False) else (1, 1))
    n_views = views[0] * views[1]
    shape = _view_shape(model)
    result = dict(model=args.model, view_shape=list(shape), views=f"{views[0]}x{views[1]}", convention=fl.CONVENTION)
    dense = {}
    with fl.dense_mode(model):
        if args.counter in ("analytic", "both"):
            dense["analytic"] = fl.analytic_gflops(model)
        if args.counter in ("fvcore", "both"):
            dense["fvcore"] = fl.dense_gflops(model)
    result["dense"] = dict(per_view=dense, total={k: v * n_views for k, v in dense.items()})
    pub = fl.PUBLISHED.get(args.model)
    default_shape = args.frames is None and args.img_size is None
    if pub and default_shape:
        ours = dense.get("analytic", dense.get("fvcore"))
        result["published"] = dict(per_view=pub["per_view"], views=f"{pub['views'][0]}x{pub['views'][1]}",
                                   total=pub["total"], source=pub["source"],
                                   diff_per_view_pct=100.0 * (ours / pub["per_view"] - 1.0))
    result["ats"] = None if model.ats is None else _run_ats(args, model, shape, views, dense)
    return result


def _run_ats(args, model, shape, views, dense) -> dict:
    if args.batches < 1 or args.batch_size < 1:
        raise VideoATSError("--batches and --batch-size must be at least 1")
    source = args.input[0] if len(args.input) == 1 else None
    if source is None and any(i in ("random", "synthetic") for i in args.input):
        raise VideoATSError("--input: give 'synthetic', 'random', or video files, not a mix")
    settings = _clip_settings(model, shape, views)
    if source == "random":
        gen = torch.Generator().manual_seed(args.seed)
        batches = (("random", torch.randn(args.batch_size, *shape, generator=gen)) for _ in range(args.batches))
        label = (f"random normal noise, {args.batches} x {args.batch_size} samples: NOT real content, "
                 "kept tokens (and GFLOPs) on real videos differ")
    elif source == "synthetic":
        batches = (("synthetic", _synthetic_batch(shape, args.batch_size, args.seed + b, settings))
                   for b in range(args.batches))
        what = "motion clips" if len(shape) == 4 else "images (the first frame of motion clips)"
        label = (f"synthetic {what} (videoats.data.synthetic scenes), {args.batches} x {args.batch_size} "
                 f"samples: counts are for this input, not for {'Kinetics' if len(shape) == 4 else 'ImageNet'}")
    files = source not in ("random", "synthetic")
    if files:
        batches = _file_batches(args.input, shape, settings)
        label = f"{len(args.input)} video file(s), every view ({views[0]}x{views[1]}) of each"
    runner, table = Runner(model), ViewTable()  # each batch in one pass: its padded figure is this batch's
    fv_first, ids = None, {}  # a file's views are one video (a file given twice: the same one)
    for src, x in batches:
        table.add(runner.run(x), keys=torch.full((len(x),), ids.setdefault(src, len(ids))) if files else None)
        if fv_first is None and args.counter in ("fvcore", "both"):
            one = x[:1]
            fv = fl.fvcore_count(model, one).gflops
            fv_first = dict(fvcore=fv, padded_analytic=fl.padded_gflops(model, one),
                            sample_analytic=float(fl.sample_gflops(model, one)[0]))
    views_table = table.packed()
    summary = gflops_summary(views_table, views)
    base = dense.get("analytic", dense.get("fvcore"))
    cfg = model.ats
    setting = cfg.to_dict()
    out = dict(config=dict(blocks=setting["blocks"], tokens=setting["tokens"], variant=setting["variant"],
                           selection=setting["selection"], seed=setting["seed"],
                           layout=f"pruned ({cfg.mode})" if cfg.drop_tokens else "masked"),
               input=label, weights=args.checkpoint or "random initialisation (no --checkpoint): kept tokens "
                                                        "reflect untrained attention",
               samples=summary["per_view"]["count"], per_sample_per_view=summary["per_view"],
               per_sample_total=summary["total"], total_is=summary["total_is"],
               padded_per_view=summary["padded_per_view"], padded_total=summary["padded_total"],
               saving_vs_dense_pct=100.0 * (1.0 - summary["per_view"]["mean"] / base),
               kept_tokens={str(b): stats(v) for b, v in sorted(views_table["kept"].items())})
    if fv_first is not None:
        out["fvcore_check_first_sample"] = fv_first
    return out


def _g(v) -> str:
    return number_text(v, digits=4, missing="-")


def format_flops(r: dict) -> str:
    lines = [f"GFLOPs of {r['model']}, view {'x'.join(map(str, r['view_shape']))}, views {r['views']} "
             "(total = per view x clips x crops)",
             f"  {r['convention']}", "",
             f"  {'':<34} {'per view':>12} {'total (' + r['views'] + ')':>14}"]
    for counter, v in r["dense"]["per_view"].items():
        lines.append(f"  {'dense, ' + counter:<34} {_g(v):>12} {_g(r['dense']['total'][counter]):>14}")
    pub = r.get("published")
    if pub:
        lines.append(f"  {'published (' + pub['views'] + ')':<34} {_g(pub['per_view']):>12} {_g(pub['total']):>14}"
                     f"   ({pub['diff_per_view_pct']:+.2f}% per view; {pub['source']})")
    ats = r.get("ats")
    if ats:
        c = ats["config"]
        ps, pt = ats["per_sample_per_view"], ats["per_sample_total"]
        name = METHOD_NAMES[c["selection"]]
        seed = f" (seed {c['seed']})" if c["selection"] == "random" else ""
        lines += ["", f"  {name}{seed} at blocks {c['blocks']}, tokens {c['tokens']}, variant {c['variant']}, "
                      f"{c['layout']} layout; {ats['samples']} samples", f"  input: {ats['input']}",
                  f"  weights: {ats['weights']}"]
        lines.append(f"  total = {ats['total_is']}")
        for key in ("mean", "min", "max"):
            lines.append(f"  {name + ' per sample, ' + key:<34} {_g(ps[key]):>12} {_g(pt[key]):>14}")
        lines.append(f"  {name + ' padded batch (what it computed)':<34} {_g(ats['padded_per_view']):>12} "
                     f"{_g(ats['padded_total']):>14}")
        lines.append(f"  saving vs dense (per-sample mean): {ats['saving_vs_dense_pct']:.1f}%")
        kt = ", ".join(f"{b}: {v['mean']:.1f} [{v['min']:.0f}-{v['max']:.0f}]" for b, v in ats["kept_tokens"].items())
        lines.append(f"  kept patch tokens per stage (all frames; mean [min-max]): {kt}")
        fv = ats.get("fvcore_check_first_sample")
        if fv:
            lines.append(f"  fvcore check, first sample at batch 1: fvcore {_g(fv['fvcore'])}, analytic padded "
                         f"{_g(fv['padded_analytic'])}, analytic real tokens {_g(fv['sample_analytic'])}")
    return "\n".join(lines)
