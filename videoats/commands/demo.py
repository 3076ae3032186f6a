"""`videoats demo`: see ATS work in under a minute on a laptop, with nothing to download.

It generates (once, cached) the test split of the synthetic motion benchmark the shipped checkpoint was
trained on (`tools/finetune_synthetic.py`, provenance.json), evaluates that checkpoint dense and with ATS
through the same code as `videoats eval`, prints the comparison with the spread of kept tokens (ATS keeps
a content-dependent count), and writes the kept-token histogram and a token picture of one 64 px clip.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from ._args import add_common
from ..checkpoint import inspect_checkpoint
from ..config import apply_overrides, config_from_yaml, get_cfg
from ..data import build_dataset
from ..data.synthetic import SCENES, STORAGE, make_synthetic
from ..evaluation.evaluate import evaluate
from ..inference.predictor import load_predictor
from ..inference.shipped import CHECKPOINT, ats_overrides, provenance
from ..inference.visualize import visualize_clip
from ..paths import cache_dir, check_output_dir, declare_outputs

_provenance = provenance  # the shipped model's record (videoats.inference.shipped)


def register(sub) -> None:
    p = add_common(sub.add_parser(
        "demo", help="evaluate the shipped tiny model dense and with ATS on synthetic videos (no download)",
        description="Generate the synthetic test split (cached), evaluate the checkpoint shipped in the package "
                    "dense and with ATS, print top-1 / top-5 / GFLOPs per view / kept tokens, and write the "
                    "kept-token histogram and a token visualisation of one clip."))
    p.add_argument("--output", default="videoats_demo", help="folder for results and pictures "
                                                             "(default: ./videoats_demo)")
    p.add_argument("--data", default=None, help="where the synthetic videos are cached "
                                                "(default: $VIDEOATS_HOME/demo_synthetic, ~/.cache/videoats/...)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    declare_outputs(p, output="dir", data="dir")
    p.set_defaults(func=run, human=human)


def ensure_split(data_dir: str, recipe: dict, split: str = "test", per_class: Optional[int] = None) -> str:
    """Generate one split of the shipped model's synthetic recipe (`per_class` clips of every class; default the
    recipe's test count) unless the cache already holds the very same one. The clips are the recipe's own: the
    first `per_class` of each class, whatever else was generated."""
    per_class = recipe["test_per_class"] if per_class is None else int(per_class)
    wanted = dict({k: recipe[k] for k in ("num_classes", "num_frames", "size", "seed")}, storage=STORAGE,
                  scenes=SCENES, **{f"{split}_per_class": per_class})
    marker = os.path.join(data_dir, "demo_split.json")
    try:
        with open(marker) as f:
            if json.load(f) == wanted:
                return data_dir
    except (OSError, ValueError):
        pass
    make_synthetic(data_dir, num_classes=recipe["num_classes"], videos_per_class={split: per_class},
                   num_frames=recipe["num_frames"], size=recipe["size"], seed=recipe["seed"],
                   workers=min(2, os.cpu_count() or 1))
    with open(marker, "w") as f:
        json.dump(wanted, f)
    return data_dir


def shipped_test_config(data: str = None):
    """(the config that evaluates the shipped checkpoint on the benchmark's test split, its data folder): the
    split generated (once, cached) in `data` or the cache folder, as `videoats demo` and the tools use it."""
    data_dir = os.path.expanduser(data) if data else check_output_dir(cache_dir("demo_synthetic"), "the "
                                                                      "demo's data cache ($VIDEOATS_HOME)")
    ensure_split(data_dir, provenance()["synthetic"])
    cfg = config_from_yaml(inspect_checkpoint(str(CHECKPOINT))["metadata"]["config"])
    cfg.DATA.PATH_TO_DATA_DIR = data_dir
    cfg.DATA.LABELS_FILE = "labels.txt"
    cfg.TEST.SPLIT = "test"
    cfg.DATA.NUM_WORKERS = min(2, os.cpu_count() or 1)
    return cfg, data_dir


def run(args) -> dict:
    record = provenance()
    cfg, data_dir = shipped_test_config(args.data)
    output = os.path.abspath(args.output)
    # the ATS setting the provenance reports (the model may be fine-tuned at another budget than it is run at)
    ats_opts = ats_overrides()

    rows = []
    for setting, ats_on in (("dense", False), ("ATS", True)):
        run_cfg = cfg.clone()
        run_cfg.ATS.ENABLE = ats_on
        apply_overrides(run_cfg, ats_opts)
        result = evaluate(run_cfg, checkpoint=str(CHECKPOINT), output_dir=os.path.join(output, setting.lower()),
                          progress=not (args.json or args.no_progress))
        kept = result.get("kept_tokens") or {}
        rows.append(dict(
            setting=setting, top1=result["metrics"]["video"]["top1"], top5=result["metrics"]["video"]["top5"],
            gflops_per_view=result["gflops"]["per_view"], dense_gflops_per_view=result["gflops"]["dense_per_view"],
            kept_tokens={str(b): {"mean": round(float(v["mean"]), 2), "min": int(round(v["min"])),
                                  "max": int(round(v["max"])), "of": int(v["of"])} for b, v in kept.items()},
            videos=result["coverage"]["evaluated_videos"], results=result["files"].get("results")))

    picture = os.path.join(output, "tokens.png")
    predictor = load_predictor(checkpoint=str(CHECKPOINT), ats="on", opts=ats_opts)
    first_video = _first_test_video(data_dir)
    visualize_clip(predictor, first_video, picture)
    files = dict(results_dense=rows[0]["results"], results_ats=rows[1]["results"], tokens_png=picture,
                 kept_tokens_png=os.path.join(output, "ats", "kept_tokens.png"))
    return dict(checkpoint=str(CHECKPOINT), model=record["model"], data=data_dir,
                num_classes=record["synthetic"]["num_classes"], rows=rows, files=files,
                visualised_video=first_video)


def _first_test_video(data_dir: str) -> str:
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = data_dir
    return build_dataset(cfg, "test", annotation=os.path.join(data_dir, "test.csv")).videos[0].path


def human(result: dict) -> str:
    lines = [f"videoats demo: {result['model']} on {result['rows'][0]['videos']} synthetic test videos "
             f"({result['num_classes']} motion classes, chance {100 / result['num_classes']:.0f}%)", "",
             f"{'':<6} {'top-1':>6} {'top-5':>6} {'GFLOPs/view':>12}  kept tokens per ATS stage: mean (min-max)"]
    for r in result["rows"]:
        kept = ", ".join(f"block {b}: {v['mean']:.0f} ({v['min']}-{v['max']}) of {v['of']}"
                         for b, v in r["kept_tokens"].items()) or "all"
        lines.append(f"{r['setting']:<6} {r['top1']:>5.1f}% {r['top5']:>5.1f}% "
                     f"{r['gflops_per_view']:>12.4f}  {kept}")
    dense, ats = result["rows"][0]["gflops_per_view"], result["rows"][1]["gflops_per_view"]
    lines += ["", f"ATS spends {100 * (1 - ats / dense):.0f}% fewer GFLOPs per view.", "", "Files:"]
    lines += [f"  {k}: {v}" for k, v in result["files"].items()]
    return "\n".join(lines)
