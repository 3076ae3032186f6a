"""How eval and infer run the model: autocast precision (TEST.PRECISION) and torch.compile (TEST.COMPILE).

torch.compile's code generation takes minutes on this CPU, so the command tests compile with dynamo's `eager`
backend: the graph is captured exactly as with inductor (a graph break under fullgraph is still an error)
and then run as captured.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

import videoats
from videoats import cli
from videoats.data.clips import crop_views, protocol_frame, protocol_plan, read_clip_frames
from videoats.errors import VideoATSError
from videoats.inference.predict import run_views
from videoats.inference.predictor import load_predictor
from videoats.runtime import compiled_for_inference, inference_autocast

from conftest import ramp_video

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic")


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with the eager backend; records the keyword arguments of every call."""
    calls, real = [], torch.compile

    def fake(model, **kw):
        calls.append(kw)
        torch._dynamo.reset()
        return real(model, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", fake)
    return calls


def test_autocast_by_precision_and_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with inference_autocast("auto", cpu)():
        assert not torch.is_autocast_enabled("cpu")  # auto: full precision on the CPU
    with inference_autocast("bf16", cpu)():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with inference_autocast("fp32", cpu)():
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(VideoATSError, match="fp16 needs a CUDA device"):
        inference_autocast("fp16", cpu)
    with pytest.raises(VideoATSError, match="precision 'half'"):
        inference_autocast("half", cpu)
    if torch.cuda.is_available():
        with inference_autocast("auto", cuda)():
            assert torch.is_autocast_enabled("cuda")


def test_static_ats_compiles_as_one_graph_trim_may_break(eager_compile):
    model = videoats.create_model("timesformer_tiny_8x32", ats=dict(blocks=[1, 2], tokens=0.5, mode="static"))
    assert compiled_for_inference(model, False) is model
    compiled_for_inference(model, True)
    model.ats.mode = "trim"
    compiled_for_inference(model, True)
    assert [c["fullgraph"] for c in eager_compile] == [True, False]


def test_infer_compiled_and_in_bf16(tmp_path, capsys, eager_compile):
    clip = ramp_video(str(tmp_path / "clip.mp4"), 40, 48, 64)
    torch.manual_seed(0)
    weights = str(tmp_path / "w.pth")
    torch.save(videoats.create_model("timesformer_tiny_8x32").state_dict(), weights)
    base = ["infer", clip, "--model", "timesformer_tiny_8x32", "--checkpoint", weights, "--ats", "on",
            "ATS.BLOCKS", "[1,2]", "ATS.TOKENS", "[0.5]", "ATS.MODE", "static", "--no-progress", "--json"]

    def answer(*extra):
        assert cli.main(base + list(extra)) == 0
        return json.loads(capsys.readouterr().out)["results"][0]

    plain, compiled = answer(), answer("--compile")
    assert eager_compile == [{"fullgraph": True}]
    assert compiled["gflops"] == plain["gflops"] and compiled["kept_tokens"] == plain["kept_tokens"]
    assert [t["label"] for t in compiled["topk"]] == [t["label"] for t in plain["topk"]]
    assert [t["score"] for t in compiled["topk"]] == pytest.approx([t["score"] for t in plain["topk"]], abs=1e-5)
    half = answer("--precision", "bf16")
    assert half["gflops"]["views"] == plain["gflops"]["views"]

    # the logits themselves: bf16 really ran (not bit-identical to fp32) and points the same way with the same
    # length (bf16 keeps 8 bits of mantissa: errors of about 1e-2 of the activations; cosine above 0.995 measured on
    # this random model's small logits, where a wrong cast or a lost scale would be far off either way)
    def logits(precision):
        predictor = load_predictor(model_name="timesformer_tiny_8x32", checkpoint=weights, ats="on",
                                   opts=["ATS.BLOCKS", "[1,2]", "ATS.TOKENS", "[0.5]", "ATS.MODE", "static",
                                         "TEST.PRECISION", precision])
        s = predictor.settings()
        chunks = read_clip_frames(clip, s, lambda n, fps: protocol_plan(s, n, fps), transform=protocol_frame(s))
        next(chunks)
        return torch.cat([run_views(predictor, crop_views(f, s, s.num_crops)).logits for _, f in chunks]).float()

    full, bf16 = logits("fp32"), logits("bf16")
    assert not torch.equal(full, bf16)
    cosine = torch.nn.functional.cosine_similarity(full.flatten(), bf16.flatten(), dim=0)
    assert cosine > 0.99, float(cosine)
    assert float(bf16.norm() / full.norm()) == pytest.approx(1.0, abs=0.05)


def test_eval_records_how_it_ran(tiny_synthetic, tmp_path, capsys, eager_compile):
    args = ["eval", "--config", os.path.join(CONFIGS, "tiny_timesformer_ats_joint.yaml"),
            "DATA.PATH_TO_DATA_DIR", tiny_synthetic, "DATA.NUM_WORKERS", "0", "MODEL.NUM_CLASSES", "10",
            "TEST.NUM_SPATIAL_CROPS", "1", "DEVICE", "cpu", "--no-progress", "--json"]
    assert cli.main(args + ["--output", str(tmp_path / "a")]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert cli.main(args + ["--output", str(tmp_path / "b"), "--compile", "--precision", "fp32"]) == 0
    compiled = json.loads(capsys.readouterr().out)
    assert plain["runtime"] == {"precision": "auto", "compiled": False}
    assert compiled["runtime"] == {"precision": "fp32", "compiled": True} and len(eager_compile) == 1
    assert compiled["metrics"] == plain["metrics"] and compiled["kept_tokens"] == plain["kept_tokens"]


def test_fvcore_count_prints_no_future_warning():
    """fvcore's import warns that torch.jit.script is deprecated, on every eval, demo, train and flops run."""
    import subprocess
    import sys

    code = ("import torch, videoats; from videoats.flops import fvcore_count; "
            "m = videoats.create_model('deit_tiny_patch8_32').eval(); fvcore_count(m, torch.randn(1, 3, 32, 32))")
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
