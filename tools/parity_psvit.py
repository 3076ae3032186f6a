"""Logits of videoats' PS-ViT against the official model code (yuexy/PS-ViT, models/ps_vit.py), with random weights
saved in the official layout and loaded by `load_checkpoint`.

    python tools/parity_psvit.py PATH/TO/PS-ViT-checkout  (nothing of it is copied here)

The official sampling op is a CUDA extension (`layers.ProgressiveSample`); here it is stood in for by our
`sample_points` at point + gamma * offset, which tests/test_psvit.py shows equal to a literal re-statement of
the extension's kernel. PS-ViT takes its fixed input size only, so there is one resolution per model.
"""
import os
import sys
import tempfile
import types

import torch
from torch import nn

import videoats
from videoats.models.psvit import sample_points


class ProgressiveSample(nn.Module):
    def __init__(self, gamma=1.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, input, point, offset):
        return sample_points(input, point + offset * self.gamma)


sys.modules["layers"] = types.SimpleNamespace(ProgressiveSample=ProgressiveSample)
sys.path.insert(0, sys.argv[1])
from models import ps_vit as official  # noqa: E402

for name, theirs in (("psvit_b18_224", "ps_vit_b_18"), ("psvit_b14_224", "ps_vit_b_14")):
    torch.manual_seed(0)
    ref = getattr(official, theirs)().eval()
    with torch.no_grad():
        for k, v in ref.state_dict().items():
            if v.dtype.is_floating_point and k != "point_coord":
                v.copy_(torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v) * 0.05)
    path = os.path.join(tempfile.mkdtemp(), f"{name}_official.pth")
    torch.save({"state_dict": ref.state_dict()}, path)
    ours = videoats.create_model(name).eval()
    report = videoats.load_checkpoint(ours, path)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(224))
    with torch.no_grad():
        a, b = ref(x), ours(x)
    print(f"{name}: {report.source_format}, {len(report.mapped)} tensors; params {sum(p.numel() for p in ref.parameters()) / 1e6:.2f} M "
          f"(ours {sum(p.numel() for p in ours.parameters()) / 1e6:.2f} M); 224 px max|diff| {(a - b).abs().max().item():.2e}, "
          f"max|logit| {a.abs().max().item():.2f}")
