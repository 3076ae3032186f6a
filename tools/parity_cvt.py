"""Logits of videoats' CvT against the official code (microsoft/CvT, lib/models/cls_cvt.py), with random
weights saved in the official layout and loaded by `load_checkpoint`, at the native size and one other; and
against Hugging Face's `CvtForImageClassification` loaded with the same weights in its layout (`to_hf_cvt`),
as shipped (exact GELU) and with the official QuickGELU in its MLPs.

    python tools/parity_cvt.py PATH/TO/CvT-checkout  (needs einops; nothing of it is copied here)

The official module imports `torch._six`, which current torch lacks: the names it needs are given to it.
"""
import collections.abc
import os
import sys
import tempfile
import types
from functools import partial

import torch

import transformers

import videoats
from videoats.checkpoint import to_hf_cvt
from videoats.models.cvt import QuickGELU

six = types.ModuleType("torch._six")
six.container_abcs = collections.abc
sys.modules["torch._six"] = six
sys.path.insert(0, sys.argv[1])
import lib.models.cls_cvt as off  # noqa: E402

def spec(depths):
    return dict(NUM_STAGES=3, PATCH_SIZE=[7, 3, 3], PATCH_STRIDE=[4, 2, 2], PATCH_PADDING=[2, 1, 1],
                DIM_EMBED=[64, 192, 384], NUM_HEADS=[1, 3, 6], DEPTH=list(depths), MLP_RATIO=[4.0] * 3,
                ATTN_DROP_RATE=[0.0] * 3, DROP_RATE=[0.0] * 3, DROP_PATH_RATE=[0.0, 0.0, 0.1], QKV_BIAS=[True] * 3,
                CLS_TOKEN=[False, False, True], POS_EMBED=[False] * 3, QKV_PROJ_METHOD=['dw_bn'] * 3,
                KERNEL_QKV=[3] * 3, PADDING_KV=[1] * 3, STRIDE_KV=[2] * 3, PADDING_Q=[1] * 3, STRIDE_Q=[1] * 3)

for name, depths, sizes in [("cvt_21_384", (1, 4, 16), (384, 224)), ("cvt_13_224", (1, 2, 10), (224, 288))]:
    torch.manual_seed(0)
    ref = off.ConvolutionalVisionTransformer(num_classes=1000, act_layer=off.QuickGELU,
                                             norm_layer=partial(off.LayerNorm, eps=1e-5), spec=spec(depths)).eval()
    with torch.no_grad():
        for k, v in ref.state_dict().items():
            if v.dtype.is_floating_point:
                v.copy_(torch.randn_like(v) * 0.05 + (1.0 if k.endswith(("running_var", "norm.weight", "bn.weight", "norm1.weight", "norm2.weight")) else 0.0))
    path = os.path.join(tempfile.mkdtemp(), f"{name}_official.pth")
    torch.save(ref.state_dict(), path)
    ours = videoats.create_model(name).eval()
    report = videoats.load_checkpoint(ours, path)
    print(name, report.source_format, len(report.mapped), "params", sum(p.numel() for p in ref.parameters()) / 1e6,
          sum(p.numel() for p in ours.parameters()) / 1e6)
    hf = transformers.CvtForImageClassification(transformers.CvtConfig(
        embed_dim=[64, 192, 384], num_heads=[1, 3, 6], depth=list(depths), num_labels=1000)).eval()
    hf.load_state_dict(to_hf_cvt(ours.state_dict()))
    mlps = [m for m in hf.modules() if type(m).__name__ == "CvtIntermediate"]
    for s in sizes:
        x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(s))
        with torch.no_grad():
            a, b = ref(x), ours(x)
            shipped = hf(x).logits
            for m in mlps:
                m.activation = QuickGELU()
            quick = hf(x).logits
            for m in mlps:
                m.activation = torch.nn.GELU()
        print(f"  {s}px max|diff| official {(a - b).abs().max().item():.2e}, HF with QuickGELU "
              f"{(quick - b).abs().max().item():.2e}, HF as shipped {(shipped - b).abs().max().item():.2e}; "
              f"max|logit| {a.abs().max().item():.2f}")
