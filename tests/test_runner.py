"""Every job that forwards views goes through `videoats.runner`: evaluation, validation, `flops`, `figures` and
inference report the GFLOPs the runner reads, and the same numbers for the same views."""
from __future__ import annotations

import glob
import json
import os
from contextlib import nullcontext

import pytest
import torch

from videoats import runner
from videoats.cli import main
from videoats.config import load_config
from videoats.data import build_dataset, build_loader
from videoats.figures import load_test_clips, run_setting
from videoats.models.build import build_from_cfg
from videoats.train.loop import validate

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "synthetic",
                      "tiny_timesformer_ats_tube.yaml")
MARK = 1000.0  # added to every per-sample GFLOPs the runner reads: a job that counts on its own lacks it


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """5 test videos of one view each, the tiny ATS TimeSformer and its weights in a checkpoint."""
    from videoats.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("runner")
    data = str(root / "data")
    make_synthetic(data, num_classes=5, videos_per_class=(1, 1, 1), num_frames=32, size=32, seed=3)
    opts = ["DATA.PATH_TO_DATA_DIR", data, "DATA.NUM_WORKERS", "0", "MODEL.NUM_CLASSES", "5",
            "TEST.NUM_ENSEMBLE_VIEWS", "1", "TEST.NUM_SPATIAL_CROPS", "1", "TEST.BATCH_SIZE", "2", "DEVICE", "cpu"]
    cfg = load_config(CONFIG, opts)
    model = build_from_cfg(cfg).eval()
    with torch.no_grad():  # peaky attention: the videos keep different counts, so equal figures mean equal views
        for name, p in model.named_parameters():
            if "qkv" in name and p.dim() == 2:
                p.mul_(30)
    ckpt = str(root / "model.pt")
    torch.save(model.state_dict(), ckpt)
    return dict(cfg=cfg, opts=opts, model=model, ckpt=ckpt, data=data,
                videos=sorted(glob.glob(os.path.join(data, "test", "*", "*.mp4"))))


def _json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _every_job(setting, capsys) -> dict:
    """Per-view GFLOPs (in test-video order) or their mean, as each job reports them for the test views."""
    cfg, model = setting["cfg"], setting["model"]
    out = {}
    doc = _json(capsys, ["eval", "--config", CONFIG, "--checkpoint", setting["ckpt"], *setting["opts"],
                         "--output", "", "--json"])
    out["eval"] = doc["gflops"]["adaptive"]["per_view"]
    loader = build_loader(build_dataset(cfg, "test"), 2, num_workers=0)
    out["validate"] = validate(model, loader, torch.device("cpu"), nullcontext)["gflops_per_sample"]
    out["figures"] = run_setting(model, load_test_clips(cfg), batch=2)["gflops"].tolist()
    infer = _json(capsys, ["infer", *setting["videos"], "--config", CONFIG, "--checkpoint", setting["ckpt"],
                           "--views", "1x1", "--json", "MODEL.NUM_CLASSES", "5"])
    out["infer"] = [v["gflops"]["per_view"] for v in infer["results"]]
    # without a config, infer and flops take the views of the model's own protocol
    infer = _json(capsys, ["infer", *setting["videos"], "--model", "timesformer_tiny_8x32", "--checkpoint",
                           setting["ckpt"], "--ats", "on", "--views", "1x1", "--json", "MODEL.NUM_CLASSES", "5",
                           "ATS.BLOCKS", "[1, 2, 3]", "ATS.TOKENS", "[11]", "ATS.VARIANT", "tube"])
    out["infer_model"] = [v["gflops"]["per_view"] for v in infer["results"]]
    flops = _json(capsys, ["flops", "--model", "timesformer_tiny_8x32", "--num-classes", "5", "--ats-blocks", "1,2,3",
                           "--ats-tokens", "11", "--ats-variant", "tube", "--checkpoint", setting["ckpt"],
                           "--views", "1x1", "--input", *setting["videos"], "--json"])
    out["flops"] = flops["ats"]["per_sample_per_view"]
    return out


def _check(jobs: dict, low: float, high: float) -> None:
    per = jobs["figures"]
    assert len(per) == 5 and all(low < g < high for g in per) and len(set(per)) > 1, per
    mean = sum(per) / len(per)
    assert jobs["validate"] == pytest.approx(mean, rel=1e-12), "validation"
    e = jobs["eval"]
    assert (e["mean"], e["min"], e["max"]) == pytest.approx((mean, min(per), max(per)), abs=1e-4), "eval"
    assert e["count"] == 5
    assert sorted(jobs["infer"]) == pytest.approx(sorted(per), abs=1e-6), "infer"
    per = jobs["infer_model"]
    assert len(per) == 5 and all(low < g < high for g in per), per
    f = jobs["flops"]
    assert (f["mean"], f["min"], f["max"], f["count"]) == \
        pytest.approx((sum(per) / 5, min(per), max(per), 5), abs=1e-6), "flops"


def test_every_job_reports_the_runners_gflops_for_the_same_views(setting, capsys, monkeypatch):
    _check(_every_job(setting, capsys), 0.0, MARK)
    real = runner.sample_gflops
    monkeypatch.setattr(runner, "sample_gflops", lambda model, inputs=None: real(model, inputs) + MARK)
    _check(_every_job(setting, capsys), MARK, 2 * MARK)
