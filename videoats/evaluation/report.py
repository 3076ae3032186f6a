"""The results document of an evaluation, its human summary, and the files it writes.

Separate from the loop so that what a results file claims (coverage, which GFLOPs, which accuracy) is
decided in one place, and so that the plot command reads back exactly what eval wrote.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import yaml
from torch import nn

from ..ats.core import METHOD_NAMES
from ..atomic import atomic_write_text
from ..config import cfg_to_yaml
from ..flops import CONVENTION
from ..models.build import model_label
from ..runner import gflops_summary, per_video_gflops
from ..summary import number_text, stats, top_k
from . import metrics as M
from .plots import plot_kept_tokens

SCHEMA = "videoats.eval/1"
CLIP_NOTE = ("single-view accuracy over all evaluated views (what a training-time validation reports); "
             "NOT comparable with published multi-view numbers")
CORRUPT_REASONS = ("corrupt", "zero_frames")


def _r(x, nd=4):
    return None if x is None else round(float(x), nd)


def _coverage(dataset, ids: torch.Tensor, counts: torch.Tensor, failed: List[dict]) -> dict:
    vpv = dataset.views_per_video
    seen = dict(zip(ids.tolist(), counts.tolist()))
    reasons: Dict[int, List[dict]] = {}
    for f in failed:
        reasons.setdefault(int(f["video_index"]), []).append(f)
    not_evaluated, incomplete = [], []
    for v, record in enumerate(dataset.videos):
        n = seen.get(v, 0)
        why = reasons.get(v, [])
        if n == 0:
            first = why[0] if why else {"reason": "no_views", "detail": "no view reached the evaluator"}
            not_evaluated.append({"video_index": v, "path": record.path, "label": int(record.label),
                                  "reason": first["reason"], "detail": first.get("detail", "")})
        elif n < vpv:
            incomplete.append({"video_index": v, "path": record.path, "views_seen": int(n), "views_expected": vpv,
                               "reasons": sorted({f"{f['reason']}: {f.get('detail', '')}".strip(": ")
                                                  for f in why})})
    by_reason: Dict[str, int] = {}
    for item in not_evaluated:
        by_reason[item["reason"]] = by_reason.get(item["reason"], 0) + 1
    expected, evaluated = dataset.num_videos, len(seen)
    unlabelled = sum(1 for v in seen if dataset.videos[v].label < 0)
    return {
        "expected_videos": expected, "evaluated_videos": evaluated,
        "not_evaluated_videos": len(not_evaluated), "incomplete_videos": len(incomplete),
        "views_per_video": vpv, "expected_views": expected * vpv, "evaluated_views": int(counts.sum()),
        "unlabelled_videos": unlabelled, "complete": not not_evaluated and not incomplete,
        "by_reason": by_reason,
        "missing": [{"path": i["path"], "detail": i["detail"]} for i in not_evaluated if i["reason"] == "missing"],
        "corrupt": [{"path": i["path"], "reason": i["reason"], "detail": i["detail"]}
                    for i in not_evaluated if i["reason"] in CORRUPT_REASONS],
        "not_evaluated": not_evaluated, "incomplete": incomplete,
        "note": (f"metrics are over the {evaluated - unlabelled} evaluated, labelled videos of {expected}"
                 + ("" if not not_evaluated else f"; {len(not_evaluated)} not evaluated (never replaced)")),
    }


def _gflops(dense: Optional[float], views: dict, vpv: int, adaptive: bool) -> dict:
    out = {"convention": CONVENTION, "views": vpv,
           "dense_per_view": _r(dense), "dense_total": _r(None if dense is None else dense * vpv),
           "per_view": _r(dense), "total": _r(None if dense is None else dense * vpv), "adaptive": None}
    if adaptive:
        out["per_view"] = out["total"] = None
    g = views.get("gflops")
    if adaptive and g is not None and g.numel():
        s = gflops_summary(views, (1, vpv))  # runner: the figures `videoats flops` prints for the same views
        mean, padded = s["per_view"]["mean"], s["padded_per_view"]
        out.update(per_view=_r(mean), total=_r(mean * vpv))
        out["adaptive"] = {
            "what": "per-sample GFLOPs from each view's kept tokens (mean/min/max over evaluated views)",
            "per_view": {k: _r(v) for k, v in s["per_view"].items()},
            "per_video_total": {k: _r(v) for k, v in s["total"].items()},
            "padded_per_view": _r(padded), "padded_total": _r(s["padded_total"]),
            "padded_note": "what the padded batches really computed (each batch pads to its largest sample); "
                           "depends on TEST.BATCH_SIZE and on how views were batched",
            "saving_vs_dense": _r(None if not dense else 100.0 * (1 - mean / dense), 2),
        }
    return out


def _kept(views: dict, tokens_per_view: Optional[int]) -> Optional[dict]:
    if not views.get("kept"):
        return None
    return {str(b): {**{k: _r(v, 2) for k, v in stats(c).items()}, "of": tokens_per_view}
            for b, c in sorted(views["kept"].items())}


@dataclass
class EvalRun:
    """What one evaluation ran with and saw: everything its results document is written from. A record, so
    that the loop says what it has once and `results_document` alone decides what the file claims."""

    cfg: object
    model: nn.Module
    dataset: object
    views: dict  # the merged per-view table (`runner.merge`): keys (video, clip, crop), labels, logits, GFLOPs
    failed: List[dict]  # views that could not be decoded, over all processes
    dense_gflops: float  # fvcore, per view, on `view_shape`
    view_shape: Tuple[int, ...]
    checkpoint: Optional[str] = None  # absolute path; None: random weights
    load_report: object = None  # what loading the checkpoint matched (`checkpoint.load_weights`)
    world: int = 1
    device: str = "cpu"
    warnings: List[str] = field(default_factory=list)
    image_transform: Optional[dict] = None  # images: size, resize, crop_fraction, interpolation, mean, std


def results_document(run: EvalRun) -> Tuple[dict, List[dict]]:
    """(results dict, per-video predictions) from the merged per-view table. An image evaluation gives the
    test transform it used (`image_transform`); its images are the file's "videos" of one view each."""
    cfg, model, dataset, views, load_report = run.cfg, run.model, run.dataset, run.views, run.load_report
    view_shape, image_transform = run.view_shape, run.image_transform
    ats = model.ats.to_dict() if getattr(model, "ats", None) is not None else None
    method = cfg.TEST.AGGREGATION
    num_classes = int(getattr(model, "num_classes", len(dataset.label_names)))
    logits = views["logits"] if views["logits"] is not None else torch.empty(0, num_classes)
    video = views["keys"][:, 0]
    ev = M.evaluate_views(logits, views["labels"], video, method)
    vpv = dataset.views_per_video
    clips, crops = dataset.clips_per_video, dataset.crops_per_video
    coverage = _coverage(dataset, ev["ids"], ev["views"], run.failed)
    names = list(dataset.label_names)
    patch = getattr(model, "patch_size", None)
    tokens = view_shape[1] * (view_shape[2] // patch) * (view_shape[3] // patch) if patch else None
    gflops = _gflops(run.dense_gflops, views, vpv, ats is not None)

    predictions = []
    per_video = per_video_gflops(views) if ats is not None else {}
    for row, v in enumerate(ev["ids"].tolist()):
        record = dataset.videos[v]
        label = int(ev["labels"][row])
        scores = ev["scores"][row]
        top5 = top_k(scores, names, 5, M.probabilities(scores, method, int(ev["views"][row])))
        p = {"video_index": v, "path": record.path, "label": label,
             "label_name": names[label] if 0 <= label < len(names) else None,
             "top5": top5, "correct": (top5[0]["index"] == label) if label >= 0 else None,
             "views": int(ev["views"][row]), "views_expected": vpv}
        if v in per_video:
            p["gflops"] = _r(per_video[v])
        predictions.append(p)

    vm = ev["video"]
    doc = {
        "schema": SCHEMA,
        "model": {"name": getattr(model, "model_name", type(model).__name__), "label": model_label(model),
                  "num_classes": num_classes, "ats": ats},
        "checkpoint": run.checkpoint,
        "checkpoint_report": load_report.summary() if hasattr(load_report, "summary") else None,
        "split": cfg.TEST.SPLIT,
        "annotation": getattr(getattr(dataset, "annotation", None), "source", None),
        "protocol": {"views": f"{clips}x{crops}", "clips": clips, "crops": crops, "views_per_video": vpv,
                     "num_frames": int(cfg.DATA.NUM_FRAMES), "sampling_rate": int(cfg.DATA.SAMPLING_RATE),
                     "target_fps": float(cfg.DATA.TARGET_FPS), "crop_size": int(cfg.DATA.TEST_CROP_SIZE),
                     "clip_sampling": cfg.TEST.CLIP_SAMPLING, "mean": list(cfg.DATA.MEAN), "std": list(cfg.DATA.STD),
                     "view_shape": list(view_shape)},
        "aggregation": {"method": method, "description": M.AGGREGATION_DOC[method]},
        "metrics": {
            "video": {"top1": _r(vm["top1"]), "top5": _r(vm["top5"]),
                      "mean_class_accuracy": _r(vm["mean_class_accuracy"]), "num_videos": vm["num"],
                      "what": f"video-level, {clips}x{crops} views aggregated by {method}; {coverage['note']}"},
            "clip": {"top1": _r(ev["clip"]["top1"]), "top5": _r(ev["clip"]["top5"]),
                     "num_views": ev["clip"]["num"], "what": CLIP_NOTE},
        },
        "coverage": coverage,
        "gflops": gflops,
        "kept_tokens": _kept(views, tokens),
        "label_names": names,
        "world_size": run.world,
        "device": run.device,
        "warnings": list(run.warnings),
        "config": yaml.safe_load(cfg_to_yaml(cfg)),
    }
    if image_transform is not None:
        doc["protocol"].update(images=True, image_transform=dict(image_transform), mean=list(image_transform["mean"]),
                               std=list(image_transform["std"]), num_frames=1)
    return doc, predictions


# ---------------------------------------------------------------------------------------------- text


def videos_text(coverage: dict, where: str = "results.json") -> str:
    """How many videos a number is over, said the same way everywhere: "15 of 32 videos (17 unreadable,
    see results.json)", or "32 videos" when all were evaluated, so that a lower count is never hidden."""
    evaluated, expected = coverage["evaluated_videos"], coverage["expected_videos"]
    if evaluated == expected:
        return f"{expected} videos"
    return f"{evaluated} of {expected} videos ({coverage['not_evaluated_videos']} unreadable, see {where})"


def _pct(x):
    return "n/a" if x is None else f"{x:6.2f} %"


def format_summary(doc: dict) -> str:
    """The table people read; every number says which kind it is (video vs clip, per view vs total)."""
    m, c, g, p = doc["metrics"], doc["coverage"], doc["gflops"], doc["protocol"]
    views = p["views"]
    t = p.get("image_transform")
    if t:  # images: one view each; the transform is the protocol
        crop = f"short side {t['resize']}, centre {t['size']} crop" if t["crop_fraction"] else \
            f"resized to {t['size']} x {t['size']}, no crop"
        head = [f"videoats eval  {doc['model']['label']}  on {doc['split']} "
                f"({videos_text(c).replace('videos', 'images')}, {doc['world_size']} process(es))",
                f"checkpoint    {doc['checkpoint'] or 'none (random weights)'}",
                f"protocol      1 view per image: {crop}, {t['interpolation']}; mean {t['mean']}, std {t['std']}",
                "-" * 72, f"{'top-1':<38}{_pct(m['video']['top1'])}", f"{'top-5':<38}{_pct(m['video']['top5'])}",
                f"{'mean per-class accuracy':<38}{_pct(m['video']['mean_class_accuracy'])}", "-" * 72]
    else:
        head = [f"videoats eval  {doc['model']['label']}  on {doc['split']} "
                f"({videos_text(c)}, {doc['world_size']} process(es))",
                f"checkpoint    {doc['checkpoint'] or 'none (random weights)'}",
                f"protocol      {views} views (clips x crops), {p['num_frames']} frames every {p['sampling_rate']}, "
                f"{p['crop_size']} px; aggregation {doc['aggregation']['method']}", "-" * 72,
                f"{'video top-1 (' + views + ' views)':<38}{_pct(m['video']['top1'])}",
                f"{'video top-5':<38}{_pct(m['video']['top5'])}",
                f"{'video mean per-class accuracy':<38}{_pct(m['video']['mean_class_accuracy'])}",
                f"{'clip-level top-1 (single view)':<38}{_pct(m['clip']['top1'])}   <- not the paper metric",
                "-" * 72]
    lines = head
    if g["per_view"] is not None or g["dense_per_view"] is not None:
        lines.append(f"{'GFLOPs per view':<38}{number_text(g['per_view']):>10}   x {c['views_per_video']} views = "
                     f"{number_text(g['total'])}")
        a = g.get("adaptive")
        if a:
            pv, pt = a["per_view"], a["per_video_total"]
            name = METHOD_NAMES[(doc["model"].get("ats") or {}).get("selection", "inverse_transform")]
            lines += [f"{'  ' + name + ' per view mean/min/max':<38}{number_text(pv['mean'])} / "
                      f"{number_text(pv['min'])} / {number_text(pv['max'])}",
                      f"{'  ' + name + ' per video (all views) mean':<38}{number_text(pt['mean'])}   "
                      f"(min {number_text(pt['min'])}, max {number_text(pt['max'])})",
                      f"{'  dense per view / total':<38}{number_text(g['dense_per_view'])} / "
                      f"{number_text(g['dense_total'])}"
                      f"   saving {number_text(a['saving_vs_dense'], 1)} %",
                      f"{'  padded batches per view / total':<38}{number_text(a['padded_per_view'])} / "
                      f"{number_text(a['padded_total'])}"]
        lines.append(f"{'':<38}({CONVENTION})")
    else:
        lines.append("GFLOPs                                not counted")
    for block, s in (doc.get("kept_tokens") or {}).items():
        lines.append(f"{'kept tokens, block ' + block:<38}mean {s['mean']:.1f}  min {s['min']:.0f}  "
                     f"max {s['max']:.0f}" + (f"  of {s['of']}" if s.get("of") else ""))
    if t:
        lines.append(f"{'coverage':<38}{c['evaluated_videos']} of {c['expected_videos']} images")
    else:
        lines.append(f"{'coverage':<38}{c['evaluated_videos']} of {c['expected_videos']} videos, "
                     f"{c['evaluated_views']} of {c['expected_views']} views")
    for item in c["not_evaluated"][:10]:
        lines.append(f"  not evaluated: {item['path']}: {item['reason']}"
                     + (f" ({item['detail']})" if item.get("detail") else ""))
    if len(c["not_evaluated"]) > 10:
        lines.append(f"  ... and {len(c['not_evaluated']) - 10} more (see the results file)")
    for item in c["incomplete"][:5]:
        lines.append(f"  incomplete ({item['views_seen']} of {item['views_expected']} views): {item['path']}")
    if (doc.get("label_order") or {}).get("source") == "assumed":
        lines.append(f"label order: {doc['label_order']['note']}")
    for w in doc.get("warnings", []):
        lines.append(f"warning: {w}")
    for key, path in (doc.get("files") or {}).items():
        lines.append(f"{key:<18}{path}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- files


def write_outputs(doc: dict, predictions: List[dict], views: dict, out_dir: str) -> Dict[str, str]:
    """results.json, predictions.jsonl, summary.txt and (ATS) kept_tokens.png under `out_dir`."""
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    files = {"results": os.path.join(out_dir, "results.json"),
             "predictions": os.path.join(out_dir, "predictions.jsonl"),
             "summary": os.path.join(out_dir, "summary.txt")}
    if views.get("kept"):
        of = next(iter((doc.get("kept_tokens") or {}).values()), {}).get("of")
        files["kept_tokens_plot"] = plot_kept_tokens(
            views["kept"], os.path.join(out_dir, "kept_tokens.png"), title=doc["model"]["label"], of=of)
    atomic_write_text(files["predictions"], "".join(json.dumps(p) + "\n" for p in predictions))
    doc["files"] = files
    atomic_write_text(files["summary"], format_summary(doc) + "\n")
    atomic_write_text(files["results"], json.dumps(doc, indent=1) + "\n")
    return files
