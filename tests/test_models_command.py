"""`videoats models` counts parameters on the meta device: the published counts, derived here by hand from
the architectures, without allocating or initialising a single weight."""
import json

import torch

import videoats
from videoats.cli import main
from videoats.commands import models as models_cmd


def vit_params(width, depth, tokens, classes, frames=0, divided=False, patch=16, mlp=4):
    """Parameters of a ViT (and of TimeSformer's divided space-time blocks), counted from the layer list:
    attention = qkv + proj, each with bias; MLP = fc1 + fc2; LayerNorms weight + bias."""
    d = width
    attn = 4 * d * d + 4 * d
    block = attn + (2 * mlp * d * d + mlp * d + d) + 2 * (2 * d)  # attn, mlp, norm1, norm2
    if divided:
        block += attn + 2 * d + (d * d + d)  # temporal attention, temporal_norm1, temporal_fc
    embed = 3 * patch * patch * d + d + d + tokens * d + frames * d  # patch proj, cls, pos, time
    return depth * block + embed + 2 * d + (d * classes + classes)  # final norm, head


def test_counts_are_the_published_ones():
    counted = {m["name"]: m["params"] for m in (models_cmd.describe(n) for n in
                                                ("timesformer_8x224", "deit_small_patch16_224"))}
    assert vit_params(768, 12, 197, 600, frames=8, divided=True) == counted["timesformer_8x224"] == 121_720_152
    assert vit_params(384, 12, 197, 1000) == counted["deit_small_patch16_224"] == 22_050_664


def test_tiny_models_count_as_a_real_build():
    for name in ("timesformer_tiny_8x32", "xvit_tiny_8x32", "deit_tiny_patch8_32"):
        real = sum(p.numel() for p in videoats.create_model(name).parameters())
        assert models_cmd.describe(name)["params"] == real, name


def test_models_builds_on_meta(monkeypatch, capsys):
    """Every model the command lists is built on the meta device (no weights allocated or initialised: the
    122M-parameter models take seconds each to build for real); timings are left to benchmarks."""
    built = []

    def spy(name, **kw):
        model = videoats.create_model(name, **kw)
        built.append(model)
        return model

    monkeypatch.setattr(models_cmd, "create_model", spy)
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["models"]
    assert len(built) == len(listed) == len(videoats.list_models())
    assert all(p.device == torch.device("meta") for m in built for p in m.parameters())
