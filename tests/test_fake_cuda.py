"""The CUDA path without a GPU: every tensor a forward pass makes must follow its input to the device, and
bf16 autocast must run through every variant and mode (issue #13).

The CPU suite cannot see a tensor made on the wrong device (`torch.arange(n)` without `device=`): on the CPU
every device is the CPU. PyTorch's FakeTensorMode gives tensors a `cuda` device and shapes but no storage, so
the whole forward pass runs op by op as it would on a GPU, with the same device checks, and no GPU. A fake
tensor has no values, so the one host read per stage of the `trim` layout is answered with the values a real
forward pass of the same model on the CPU read: the fake pass then takes the same shapes. What fake tensors
cannot show (the numbers, the attention kernels CUDA picks, timings) is left to the CUDA tests and
`tools/bench_ats.py --device cuda`.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from videoats.ats import core, token_masks
from videoats.ats.stage import arrange

from test_static import BLOCKS, CASES, _input, _model


class HostReads:
    """What `Tensor.tolist` returned on a real forward pass, answered again, in order, on a fake one."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.answers, self.real = monkeypatch, [], torch.Tensor.tolist

    def record(self):
        def tolist(t):
            self.answers.append(self.real(t))
            return self.answers[-1]
        self.monkeypatch.setattr(torch.Tensor, "tolist", tolist)

    def replay(self):
        self.monkeypatch.setattr(torch.Tensor, "tolist", self.real)
        self.monkeypatch.setattr(FakeTensor, "tolist", lambda t: self.answers.pop(0))


def cuda_bf16_autocast():
    """`torch.autocast("cuda", bfloat16)` on a machine without CUDA: its constructor asks the driver whether
    CUDA and bf16 are there (else it disables itself); the dispatcher's autocast itself needs no driver."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        return torch.autocast("cuda", dtype=torch.bfloat16)


def fake_cuda_run(model, x, autocast: bool):
    """One forward pass of `model` on a fake CUDA device (its parameters become fake CUDA tensors), with
    autograd on in training mode. The shape environment lets the masked layout's `nonzero` take a size it
    cannot know. (A backward pass needs a real device: autograd's engine sets up CUDA streams.)"""
    with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv()):
        model.to("cuda")
        x = x.to("cuda")
        amp = cuda_bf16_autocast() if autocast else contextlib.nullcontext()
        with amp, torch.set_grad_enabled(model.training):
            return model(x)


def _widths(model):
    return [(r.block, r.padded_slots, r.aligned_slots, r.rows) for r in model.ats_trace]


def replayed_on_fake_cuda(model, x, autocast: bool, monkeypatch):
    """Run `model` (eval, pruned) on the CPU, then on a fake CUDA device answering its host reads with the
    CPU pass's; checks the fake pass asked for every read, kept its output dtype and every stage mask on
    the device, and took the CPU pass's layout stage by stage. Returns the fake output."""
    reads = HostReads(monkeypatch)
    reads.record()
    with torch.no_grad():
        model(x)
    widths = _widths(model)
    reads.replay()
    out = fake_cuda_run(model, x, autocast)
    assert not reads.answers  # the fake pass asked for every read the real one made
    assert out.device.type == "cuda" and out.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert all(m.device.type == "cuda" for m in token_masks(model).values())
    assert _widths(model) == widths  # the layout the CPU computed, stage by stage
    return out


@pytest.mark.parametrize("name,variant", CASES)
@pytest.mark.parametrize("mode", ["static", "trim"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_pruned_forward_stays_on_cuda(name, variant, mode, autocast, monkeypatch):
    model = _model(name, variant, mode)
    x = _input(model)
    out = replayed_on_fake_cuda(model, x, autocast, monkeypatch)
    assert out.shape == (x.shape[0], model.num_classes) and sorted(token_masks(model)) == BLOCKS


@pytest.mark.parametrize("name,variant", [("timesformer_tiny_8x32", "joint"), ("xvit_tiny_8x32", "frame"),
                                          ("deit_tiny_patch8_32", "image")])
def test_masked_training_forward_stays_on_cuda(name, variant):
    model = _model(name, variant, "trim").train()
    out = fake_cuda_run(model, _input(model), autocast=True)
    assert out.device.type == "cuda" and out.requires_grad
    assert all(m.device.type == "cuda" for m in token_masks(model).values())


def test_a_mask_left_on_the_cpu_is_caught(monkeypatch):
    """The harness fails on the defect it exists for: here, attention masks made on the CPU."""
    model = _model("timesformer_tiny_8x32", "frame", "static")

    def arrange_on_cpu(*args):
        new = arrange(*args)
        return new._replace(frame_mask=new.frame_mask.cpu())

    monkeypatch.setattr(core, "arrange", arrange_on_cpu)
    with pytest.raises(RuntimeError, match="same device"):
        fake_cuda_run(model, _input(model), autocast=False)


@pytest.mark.parametrize("name,variant", [("timesformer_tiny_8x32", "tube"), ("xvit_tiny_8x32", "joint"),
                                          ("deit_tiny_patch8_32", "image")])
def test_the_random_baseline_stays_on_cuda(name, variant):
    """Its keys are made in the forward pass (a hash of each token's place): on the input's device."""
    model = _model(name, variant, "static")
    model.ats.selection = "random"
    out = fake_cuda_run(model, _input(model), autocast=True)
    assert out.device.type == "cuda"
    assert all(m.device.type == "cuda" for m in token_masks(model).values())
