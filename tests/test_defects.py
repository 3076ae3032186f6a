"""Defects found on a fresh machine and on a GPU (issue #11), each pinned by a test that failed before its fix."""
from __future__ import annotations

import json

import pytest
import torch

import videoats
from videoats import cli
from videoats.ats import ATSConfig, kept_tokens
from videoats.config import load_config
from videoats import flops
from videoats.runner import ViewTable, account, gflops_summary
from functools import partial

from videoats.models.build import build_from_cfg

build_train_model = partial(build_from_cfg, for_training=True)
from videoats.errors import VideoATSError

from conftest import ramp_video

CUDA = torch.cuda.is_available()


def _clip(batch=2, seed=0):
    return torch.randn(batch, 3, 8, 32, 32, generator=torch.Generator().manual_seed(seed))


def _ats_model(variant="frame", **kw):
    torch.manual_seed(0)
    return videoats.create_model("timesformer_tiny_8x32", num_classes=4,
                                 ats=dict(blocks=[1, 2], tokens=0.5, variant=variant, **kw)).eval()


# --- GFLOPs accounting follows the device of the masks (CUDA masks crashed it) -------------------------

def test_accounting_runs_on_the_device_of_the_masks():
    """The count of a forward pass on another device stays there: 'meta' stands in for CUDA, and as on
    CUDA any tensor the count makes without `device=` (a CPU tensor mixed with device masks) raises, and
    so does any host read of a mask (`.item()`, `float()`, `.tolist()`: a sync per batch on CUDA); the
    result is float64, as the CPU count is. Its values need a real device: the CUDA test below."""
    model = _ats_model()
    x = _clip()
    with torch.no_grad():
        model(x)
    on_cpu = flops.sample_gflops(model, x)
    for record in model.ats_trace:
        record.mask = record.mask.to("meta")
    on_meta = flops.sample_gflops(model, x)
    assert on_meta.device.type == "meta" and on_meta.shape == on_cpu.shape == (2,)
    assert on_meta.dtype == on_cpu.dtype == torch.float64


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("variant", ["tube", "frame", "joint"])
@pytest.mark.parametrize("mode", ["trim", "static"])
def test_ats_accounting_and_records_on_cuda(variant, mode):
    model = _ats_model(variant, mode=mode)
    x = _clip()
    with torch.no_grad():
        ref = model(x)
        ref_gflops = flops.sample_gflops(model, x)
        ref_kept = kept_tokens(model)
        model.cuda()
        out = model(x.cuda())
    assert (out.cpu() - ref).abs().max() < 1e-3
    table = ViewTable()
    per = flops.sample_gflops(model, x)
    table.add(account(model, x), keys=torch.tensor([0, 1]))
    assert per.cpu().tolist() == pytest.approx(ref_gflops.tolist(), rel=1e-9)
    assert {b: k.cpu().tolist() for b, k in kept_tokens(model).items()} == \
        {b: k.tolist() for b, k in ref_kept.items()}
    assert flops.padded_gflops(model, x) > 0 and gflops_summary(table.packed())["per_view"]["count"] == 2


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_flops_command_with_ats_on_cuda(capsys):
    rc = cli.main(["flops", "--model", "timesformer_tiny_8x32", "--ats-blocks", "1,2", "--ats-tokens", "0.5",
                   "--input", "random", "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["ats"]["samples"] == 4


# --- inference mode leaves nothing behind ---------------------------------------------------------------

def test_inference_mode_then_training_still_works():
    model = _ats_model()
    x = _clip()
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()  # raised "Inference tensors cannot be saved for backward"
    assert model.head.weight.grad is not None
    with torch.no_grad():
        model.eval()(x)


# --- per-block budgets ----------------------------------------------------------------------------------

def test_per_block_budgets_belong_to_their_blocks():
    cfg = ATSConfig(blocks=[2, 1], tokens=[0.9, 0.3]).check(4, 8, 16, True)
    assert cfg.blocks == [1, 2] and cfg.budget(1) == 0.3 and cfg.budget(2) == 0.9


def test_flops_budgets_in_any_block_order(capsys):
    def kept(blocks, tokens):
        rc = cli.main(["flops", "--model", "timesformer_tiny_8x32", "--ats-blocks", blocks, "--ats-tokens", tokens,
                       "--input", "random", "--json"])
        assert rc == 0
        return json.loads(capsys.readouterr().out)["ats"]["kept_tokens"]

    assert kept("2,1", "0.9,0.3") == kept("1,2", "0.3,0.9")


def test_empty_ats_options_are_refused():
    with pytest.raises(VideoATSError, match="names no block"):
        videoats.create_model("timesformer_tiny_8x32", ats={})


# --- config values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [("LOG_PERIOD", "0"), ("SOLVER.MOMENTUM", "1.5"), ("DATA.NUM_WORKERS", "-1"),
                                       ("MODEL.DROP_PATH_RATE", "1.2"), ("DATA.STD", "[0.2,0.0,0.2]")])
def test_numeric_keys_are_checked_up_front(key, value):
    with pytest.raises(VideoATSError, match=key.replace(".", r"\.")):
        load_config(None, [key, value])


def _train_model(*opts):
    with torch.device("meta"):  # the published models, shapes only: instant
        return build_train_model(load_config(None, ["MODEL.NUM_CLASSES", "4", *opts]))


def test_drop_path_and_dropout_can_be_set_to_zero():
    # registered: TimeSformer drop path 0.1, X-ViT dropout 0.5; 0 used to mean "keep the registered value"
    assert _train_model("MODEL.NAME", "timesformer_8x224").blocks[-1].drop_prob == pytest.approx(0.1)
    assert all(b.drop_prob == 0.0 for b in _train_model("MODEL.NAME", "timesformer_8x224",
                                                         "MODEL.DROP_PATH_RATE", "0").blocks)
    assert _train_model("MODEL.NAME", "xvit_b16_8x224").frame_drop.p == pytest.approx(0.5)
    assert _train_model("MODEL.NAME", "xvit_b16_8x224", "MODEL.DROPOUT_RATE", "0").frame_drop.p == 0.0
    assert _train_model("MODEL.NAME", "xvit_b16_8x224", "MODEL.DROPOUT_RATE", "0.2").frame_drop.p == 0.2
    assert load_config(None, ["MODEL.DROP_PATH_RATE", "None"]).MODEL.DROP_PATH_RATE is None


# --- inference with an image model, and `flops --input FILE` -------------------------------------------

def test_infer_refuses_an_image_model_in_one_line(tmp_path, capsys):
    clip = ramp_video(str(tmp_path / "clip.mp4"), 16, 32, 32)
    assert cli.main(["infer", clip, "--model", "deit_tiny_patch8_32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "image model" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["timesformer_tiny_8x32", "xvit_tiny_8x32"])  # two normalisations
def test_flops_on_a_file_counts_what_infer_reports(name, tmp_path, capsys):
    clip = ramp_video(str(tmp_path / "clip.mp4"), 80, 48, 64)
    torch.manual_seed(3)
    model = videoats.create_model(name)
    with torch.no_grad():  # uneven attention, so the kept counts depend on the pixels
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    weights = str(tmp_path / "weights.pth")
    torch.save(model.state_dict(), weights)

    assert cli.main(["flops", "--model", name, "--checkpoint", weights, "--ats-blocks", "1,2",
                     "--ats-tokens", "0.5", "--ats-variant", "frame", "--views", "2x3", "--input", clip,
                     "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)["ats"]
    assert cli.main(["infer", clip, "--model", name, "--checkpoint", weights, "--ats", "on",
                     "--views", "2x3", "ATS.BLOCKS", "[1,2]", "ATS.TOKENS", "[0.5]", "ATS.VARIANT", "frame",
                     "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    reported = out["results"][0]["gflops"]
    assert counted["samples"] == reported["views"] == 6
    assert counted["per_sample_per_view"]["mean"] == pytest.approx(reported["per_view"], abs=1e-5)
    assert counted["per_sample_per_view"]["min"] == pytest.approx(reported["per_view_min"], abs=1e-5)
    assert counted["per_sample_per_view"]["max"] == pytest.approx(reported["per_view_max"], abs=1e-5)
    assert reported["per_view_min"] < reported["per_view_max"]  # the views differ: a real comparison
