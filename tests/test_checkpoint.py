"""Checkpoint layouts: round trips give identical logits, ImageNet init has the TimeSformer authors' numerics,
embeddings resize as the originals do, and everything that does not fit is refused in one line."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import videoats
from videoats import VideoATSError, cli
from videoats.checkpoint import (load_checkpoint, read_checkpoint, save_checkpoint, to_hf_timesformer,
                                 to_official_timesformer, to_official_xvit)

TS, XV, VIT = "timesformer_tiny_8x32", "xvit_tiny_8x32", "deit_tiny_patch8_32"


def randomized(name, seed=0, **kw):
    """A model whose every tensor is random (temporal_fc, time_embed and head included), in eval mode."""
    torch.manual_seed(seed)
    model = videoats.create_model(name, **kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def fresh(name, **kw):
    return videoats.create_model(name, **kw).eval()


@pytest.fixture(scope="module")
def video():
    return torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def ts():
    return randomized(TS)


_REF = {}


def logits_diff(a, b, x):
    """Max |a(x) - b(x)|; b's logits are cached, since the source model is compared against many loads."""
    with torch.no_grad():
        key = (id(b), id(x))
        if key not in _REF:
            _REF[key] = (b, x, b(x))  # keep b and x alive so that their ids stay theirs
        return (a(x) - _REF[key][2]).abs().max().item()


# ------------------------------------------------------------------------------------- round trips

def _ts_layouts(tmp, sd):
    official = to_official_timesformer(sd)
    hf = to_hf_timesformer(sd)
    torch.save({"epoch": 7, "model_state": official, "optimizer_state": {}, "cfg": "TRAIN:\n  ENABLE: True\n"},
               tmp / "official.pyth")
    torch.save({"model_state": {"module." + k: v for k, v in official.items()}}, tmp / "ddp.pyth")
    torch.save({"module." + k: v for k, v in sd.items()}, tmp / "module_prefixed.pth")
    torch.save(dict(sd), tmp / "bare.pth")
    torch.save({"state_dict": dict(sd)}, tmp / "state_dict.pth")
    (tmp / "hf_st").mkdir()
    save_file(hf, str(tmp / "hf_st" / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "hf_bin").mkdir()
    torch.save(hf, tmp / "hf_bin" / "pytorch_model.bin")
    return {"official.pyth": "timesformer_official", "ddp.pyth": "timesformer_official",
            "module_prefixed.pth": "timesformer_official", "bare.pth": "timesformer_official",
            "state_dict.pth": "timesformer_official", "hf_st": "hf_timesformer", "hf_bin": "hf_timesformer",
            "hf_st/model.safetensors": "hf_timesformer"}


def test_timesformer_round_trips(tmp_path, ts, video):
    layouts = _ts_layouts(tmp_path, ts.state_dict())
    save_checkpoint(tmp_path / "ours.safetensors", ts)
    save_checkpoint(tmp_path / "ours.pt", ts)
    layouts.update({"ours.safetensors": "videoats", "ours.pt": "videoats"})
    for name, fmt in layouts.items():
        model = fresh(TS)
        report = load_checkpoint(model, tmp_path / name)
        assert report.source_format == fmt, name
        assert len(report.mapped) == len(ts.state_dict()) and not report.resized and not report.ignored, name
        assert logits_diff(model, ts, video) == 0.0, name


def test_official_pyth_loads_without_full_unpickling(tmp_path, ts):
    torch.save({"epoch": 3, "model_state": to_official_timesformer(ts.state_dict()), "cfg": "a: 1"},
               tmp_path / "x.pyth")
    raw = read_checkpoint(tmp_path / "x.pyth")
    assert not raw.unsafe_pickle and raw.container == "model_state" and raw.stripped == ["model."]
    assert raw.meta["epoch"] == 3


def test_hf_key_names():
    sd = fresh(TS).state_dict()
    hf = to_hf_timesformer(sd)
    assert len(hf) == len(sd)
    for ours, theirs in [
        ("blocks.0.temporal_fc.weight", "timesformer.encoder.layer.0.temporal_dense.weight"),
        ("patch_embed.proj.weight", "timesformer.embeddings.patch_embeddings.projection.weight"),
        ("head.weight", "classifier.weight"),
        ("cls_token", "timesformer.embeddings.cls_token"),
        ("pos_embed", "timesformer.embeddings.position_embeddings"),
        ("time_embed", "timesformer.embeddings.time_embeddings"),
        ("blocks.3.attn.qkv.bias", "timesformer.encoder.layer.3.attention.attention.qkv.bias"),
        ("blocks.1.attn.proj.weight", "timesformer.encoder.layer.1.attention.output.dense.weight"),
        ("blocks.2.temporal_attn.qkv.weight", "timesformer.encoder.layer.2.temporal_attention.attention.qkv.weight"),
        ("blocks.2.temporal_attn.proj.bias", "timesformer.encoder.layer.2.temporal_attention.output.dense.bias"),
        ("blocks.0.temporal_norm1.weight", "timesformer.encoder.layer.0.temporal_layernorm.weight"),
        ("blocks.0.norm1.bias", "timesformer.encoder.layer.0.layernorm_before.bias"),
        ("blocks.0.norm2.bias", "timesformer.encoder.layer.0.layernorm_after.bias"),
        ("blocks.0.mlp.fc1.weight", "timesformer.encoder.layer.0.intermediate.dense.weight"),
        ("blocks.0.mlp.fc2.weight", "timesformer.encoder.layer.0.output.dense.weight"),
        ("norm.weight", "timesformer.layernorm.weight"),
    ]:
        assert theirs in hf and hf[theirs] is sd[ours], ours


def test_hf_label_names_from_config(tmp_path, ts):
    (tmp_path / "hf").mkdir()
    save_file(to_hf_timesformer(ts.state_dict()), str(tmp_path / "hf" / "model.safetensors"))
    labels = [f"class {i}" for i in range(10)]
    id2label = {str(i): lab for i, lab in enumerate(labels)}
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"id2label": id2label}))
    assert load_checkpoint(fresh(TS), tmp_path / "hf").metadata["label_names"] == labels


def test_xvit_round_trips(tmp_path, video):
    xv = randomized(XV)
    sd = xv.state_dict()
    official = to_official_xvit(sd)
    assert "consensus.temporal_encoder.0.attn.qkv.weight" in official and "base_model.temp_embed" in official
    assert "consensus.mlp_head.4.bias" in official and "new_fc.weight" in official
    torch.save({"epoch": 1, "model_state": official, "cfg": "x"}, tmp_path / "official.pth")
    torch.save(official, tmp_path / "raw.pth")
    save_checkpoint(tmp_path / "ours.safetensors", xv)
    torch.save(dict(sd), tmp_path / "bare.pth")
    for name, fmt in [("official.pth", "xvit_official"), ("raw.pth", "xvit_official"),
                      ("ours.safetensors", "videoats"), ("bare.pth", "xvit_state_dict")]:
        model = fresh(XV)
        report = load_checkpoint(model, tmp_path / name)
        assert report.source_format == fmt
        assert sorted(report.ignored) == (["new_fc.bias", "new_fc.weight"] if "xvit_official" == fmt else [])
        assert logits_diff(model, xv, video) == 0.0, name


def test_timm_vit_round_trip(tmp_path):
    vit = randomized(VIT)
    x = torch.randn(2, 3, 32, 32)
    torch.save({"model": vit.state_dict()}, tmp_path / "deit.pth")
    save_file(vit.state_dict(), str(tmp_path / "deit.safetensors"))
    save_checkpoint(tmp_path / "ours.safetensors", vit, label_names=list("abcdefghij"))
    for name in ("deit.pth", "deit.safetensors", "ours.safetensors"):
        model = fresh(VIT)
        load_checkpoint(model, tmp_path / name)
        assert logits_diff(model, vit, x) == 0.0, name


def test_videoats_metadata(tmp_path, ts):
    labels = [f"l{i}" for i in range(10)]
    for name in ("a.safetensors", "a.pt"):
        save_checkpoint(tmp_path / name, ts, config="MODEL:\n  NAME: timesformer_tiny_8x32\n", label_names=labels,
                        extra={"epoch": 4})
        report = load_checkpoint(fresh(TS), tmp_path / name)
        assert report.metadata["label_names"] == labels
        assert report.metadata["model_name"] == TS and report.metadata["num_classes"] == 10
        assert "NAME: timesformer_tiny_8x32" in report.metadata["config"]
        assert read_checkpoint(tmp_path / name).meta["epoch"] == 4
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []  # atomic: no temp file left
    with pytest.raises(VideoATSError, match="3 label names"):
        save_checkpoint(tmp_path / "b.safetensors", ts, label_names=["a", "b", "c"])
    assert not (tmp_path / "b.safetensors").exists()


# ------------------------------------------------------------------------------ ImageNet init (timm)

def test_timm_init_into_timesformer(tmp_path):
    vit = randomized(VIT, seed=3)
    torch.save({"model": vit.state_dict()}, tmp_path / "deit.pth")
    model = randomized(TS, seed=4)  # random temporal_fc / time_embed, to see that the loader zeroes them
    report = load_checkpoint(model, tmp_path / "deit.pth")
    assert report.source_format == "timm_vit"
    sd = model.state_dict()
    for i in range(4):
        for part in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias"):
            assert torch.equal(sd[f"blocks.{i}.temporal_attn.{part}"], vit.state_dict()[f"blocks.{i}.attn.{part}"])
        for part in ("weight", "bias"):
            assert torch.equal(sd[f"blocks.{i}.temporal_norm1.{part}"], sd[f"blocks.{i}.norm1.{part}"])
            assert not sd[f"blocks.{i}.temporal_fc.{part}"].any()
        assert report.initialized[f"blocks.{i}.temporal_fc.weight"] == "zero"
    assert not sd["time_embed"].any() and report.initialized["time_embed"] == "zero"
    # Consequence: the temporal residual is exactly zero, so every frame's tokens evolve as in the image ViT,
    # and the CLS update (mean over identical frames) equals the image CLS update: on a video of one repeated
    # image the TimeSformer's features are the ViT's normed CLS. Same class count -> same logits.
    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    clip = img[:, :, None].expand(2, 3, 8, 32, 32).contiguous()
    with torch.no_grad():
        ours = model.forward_features(clip)
        theirs = vit.forward_features(img)[:, 0]
        assert (ours - theirs).abs().max().item() < 1e-5
        assert (model(clip) - vit(img)).abs().max().item() < 1e-5
        # and a video whose frames differ does not reduce to that (the check above is not vacuous)
        other = clip.clone()
        other[:, :, 3] = torch.randn(2, 3, 32, 32)
        assert (model.forward_features(other) - theirs).abs().max().item() > 1e-3


def test_timm_init_new_head_and_xvit(tmp_path):
    vit = randomized(VIT, seed=3, num_classes=1000)
    torch.save({"model": vit.state_dict()}, tmp_path / "in1k.pth")
    model = fresh(TS, num_classes=7)
    report = load_checkpoint(model, tmp_path / "in1k.pth")  # a new head is part of the ImageNet init
    assert "head.weight" in report.resized and "[1000, 64] -> [7, 64]" in report.resized["head.weight"]
    assert not model.head.bias.any()
    xv = fresh(XV)
    before = {k: v.clone() for k, v in xv.state_dict().items()}
    report = load_checkpoint(xv, tmp_path / "in1k.pth")
    sd = xv.state_dict()
    assert sorted(report.ignored) == ["head.bias", "head.weight"]
    for k, v in vit.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(sd[k], v), k
    for k in sd:
        if k.startswith("temporal_head.") or k == "temp_embed":
            assert torch.equal(sd[k], before[k]) and k in report.initialized


# ------------------------------------------------------------------------------------------- resizing

def test_time_and_pos_embed_resized(tmp_path, ts):
    torch.save({"model_state": to_official_timesformer(ts.state_dict())}, tmp_path / "t8.pyth")
    model = fresh(TS, num_frames=16, img_size=64)
    report = load_checkpoint(model, tmp_path / "t8.pyth")
    assert set(report.resized) == {"time_embed", "pos_embed"}
    assert "[1, 8, 64] -> [1, 16, 64]" in report.resized["time_embed"]
    assert "[1, 17, 64] -> [1, 65, 64]" in report.resized["pos_embed"]
    old_t, new_t = ts.time_embed.detach(), model.time_embed.detach()
    for i in range(16):  # nearest: frame i of 16 takes frame i // 2 of 8
        assert torch.equal(new_t[0, i], old_t[0, i // 2])
    old_p, new_p = ts.pos_embed.detach(), model.pos_embed.detach()
    assert torch.equal(new_p[0, 0], old_p[0, 0])  # CLS kept
    for j in range(64):  # 1-D nearest over the flattened 16 patches -> 64: patch j takes j * 16 // 64
        assert torch.equal(new_p[0, 1 + j], old_p[0, 1 + j // 4])
    assert len(report.mapped) == len(ts.state_dict()) - 2


def test_xvit_temp_embed_resized(tmp_path):
    xv = randomized(XV)
    torch.save({"model_state": to_official_xvit(xv.state_dict())}, tmp_path / "x.pth")
    model = fresh(XV, num_frames=16, num_segments=16)
    report = load_checkpoint(model, tmp_path / "x.pth")
    assert set(report.resized) == {"temp_embed"}
    for i in range(16):
        assert torch.equal(model.temp_embed[0, i], xv.temp_embed[0, i // 2])


# ------------------------------------------------------------------------------------------- refusals

def _expect(model, path, *words, **kw):
    with pytest.raises(VideoATSError) as e:
        load_checkpoint(model, path, **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def test_refusals(tmp_path, ts):
    sd = ts.state_dict()
    xv = randomized(XV)
    torch.save({"model_state": to_official_xvit(xv.state_dict())}, tmp_path / "xvit.pth")
    _expect(fresh(TS), tmp_path / "xvit.pth", "X-ViT", "TimeSformer")
    torch.save(to_official_timesformer(sd), tmp_path / "ts.pyth")
    _expect(fresh(XV), tmp_path / "ts.pyth", "TimeSformer", "X-ViT")
    _expect(fresh(TS, depth=2), tmp_path / "ts.pyth", "4 blocks", "2")
    _expect(fresh(TS, embed_dim=32, num_heads=4), tmp_path / "ts.pyth", "width 64")
    _expect(fresh(TS, num_classes=5), tmp_path / "ts.pyth", "10 classes", "5", "allow_head_reset")
    _expect(fresh(XV, num_classes=5), tmp_path / "xvit.pth", "10 classes")
    vit = randomized(VIT)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    _expect(fresh(VIT, num_classes=5), tmp_path / "vit.pth", "10 classes")

    missing = dict(sd)
    del missing["blocks.1.temporal_fc.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    _expect(fresh(TS), tmp_path / "missing.pth", "1 missing", "blocks.1.temporal_fc.bias [64]")
    extra = dict(sd, **{"blocks.0.extra.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    _expect(fresh(TS), tmp_path / "extra.pth", "1 unexpected", "blocks.0.extra.weight [3]")
    bad = dict(sd, **{"blocks.2.mlp.fc1.weight": torch.zeros(128, 64)})
    torch.save(bad, tmp_path / "bad.pth")
    _expect(fresh(TS), tmp_path / "bad.pth", "mis-shaped",
            "blocks.2.mlp.fc1.weight checkpoint [128, 64] vs model [256, 64]")
    many = {k: v for k, v in sd.items() if ".temporal_" not in k}
    many["time_embed"] = sd["time_embed"]
    torch.save(many, tmp_path / "many.pth")
    _expect(fresh(TS), tmp_path / "many.pth", "missing", "(32 in all)")


def test_head_reset_on_purpose(tmp_path, ts, video):
    torch.save({"model_state": to_official_timesformer(ts.state_dict())}, tmp_path / "ts.pyth")
    model = fresh(TS, num_classes=5)
    report = load_checkpoint(model, tmp_path / "ts.pyth", allow_head_reset=True)
    assert set(report.resized) == {"head.weight", "head.bias"}
    with torch.no_grad():
        assert torch.equal(model.forward_features(video), ts.forward_features(video))


def test_strict_false_loads_what_fits(tmp_path, ts):
    sd = dict(ts.state_dict())
    del sd["norm.bias"]
    torch.save(sd, tmp_path / "partial.pth")
    model = fresh(TS)
    report = load_checkpoint(model, tmp_path / "partial.pth", strict=False)
    assert report.missing == ["norm.bias"] and torch.equal(model.norm.weight, ts.norm.weight)


def test_bad_files(tmp_path):
    _expect(fresh(TS), tmp_path / "nope.pyth", "not found")
    (tmp_path / "random.pth").write_bytes(os.urandom(4096).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    _expect(fresh(TS), tmp_path / "random.pth", "not a checkpoint")
    (tmp_path / "notes.txt").write_text("hello, I am not a checkpoint\n")
    _expect(fresh(TS), tmp_path / "notes.txt", "not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    _expect(fresh(TS), tmp_path / "empty.pt", "empty")
    (tmp_path / "emptydir").mkdir()
    _expect(fresh(TS), tmp_path / "emptydir", "no weights in folder")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    _expect(fresh(TS), tmp_path / "list.pt", "not a state dict")
    torch.save({"a": torch.zeros(2)}, tmp_path / "odd.pt")
    _expect(fresh(TS), tmp_path / "odd.pt", "unrecognised checkpoint layout")
    torch.save({"model_state": {"x": torch.zeros(1)}, "thing": Thing()}, tmp_path / "objects.pth")
    _expect(fresh(TS), tmp_path / "objects.pth", "not a plain-tensor PyTorch file")


class Thing:
    """Not a tensor: a weights_only load refuses it."""


# ---------------------------------------------------------------------------------------------- CLI

def test_cli_convert(tmp_path, ts, video, capsys):
    (tmp_path / "hf").mkdir()
    save_file(to_hf_timesformer(ts.state_dict()), str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "labels.txt").write_text("\n".join(f"label {i}" for i in range(10)) + "\n")
    out = tmp_path / "out" / "ts.safetensors"
    assert cli.main(["convert", str(tmp_path / "hf"), str(out), "--model", TS, "--labels",
                     str(tmp_path / "labels.txt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["report"]["source_format"] == "hf_timesformer" and result["num_classes"] == 10
    model = fresh(TS)
    report = load_checkpoint(model, out)
    assert report.source_format == "videoats" and report.metadata["label_names"][3] == "label 3"
    assert "NAME: timesformer_tiny_8x32" in report.metadata["config"]
    assert logits_diff(model, ts, video) == 0.0
    # timm weights into a video model with a given class count
    torch.save({"model": randomized(VIT).state_dict()}, tmp_path / "deit.pth")
    assert cli.main(["convert", str(tmp_path / "deit.pth"), str(tmp_path / "init.safetensors"), "--model", TS,
                     "--num-classes", "4"]) == 0
    assert "initialized" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "text", "arch", "classes", "exists", "suffix"])
def test_cli_convert_errors(tmp_path, ts, capsys, case):
    torch.save({"model_state": to_official_xvit(randomized(XV).state_dict())}, tmp_path / "xvit.pth")
    torch.save({"model_state": to_official_timesformer(ts.state_dict())}, tmp_path / "ts.pyth")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "exists.safetensors").write_bytes(b"x")
    src, out, extra = {
        "missing": ("nope.pyth", "o.safetensors", []),
        "text": ("notes.txt", "o.safetensors", []),
        "arch": ("xvit.pth", "o.safetensors", []),
        "classes": ("ts.pyth", "o.safetensors", ["--num-classes", "3"]),
        "exists": ("ts.pyth", "exists.safetensors", []),
        "suffix": ("ts.pyth", "o.bin", []),
    }[case]
    code = cli.main(["convert", str(tmp_path / src), str(tmp_path / out), "--model", TS] + extra)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("videoats convert: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o.safetensors").exists()


def test_pyth_with_python_objects_falls_back_with_warning(tmp_path, ts):
    torch.save({"model_state": to_official_timesformer(ts.state_dict()), "cfg": Thing()}, tmp_path / "old.pyth")
    with pytest.warns(UserWarning, match="full unpickling"):
        raw = read_checkpoint(tmp_path / "old.pyth")
    assert raw.unsafe_pickle and raw.stripped == ["model."]


def test_top_level_api_and_ats_model(tmp_path, ts, video):
    save_checkpoint(tmp_path / "ts.safetensors", ts)
    model = videoats.create_model(TS, ats=dict(blocks=[1], tokens=0.5)).eval()
    report = videoats.load_checkpoint(model, tmp_path / "ts.safetensors")
    assert report.source_format == "videoats" and torch.equal(model.time_embed, ts.time_embed)


def test_vit_pos_embed_resized_like_timm(tmp_path):
    from timm.layers import resample_abs_pos_embed

    vit = randomized(VIT)
    torch.save({"model": vit.state_dict()}, tmp_path / "deit.pth")
    model = fresh(VIT, img_size=64)
    report = load_checkpoint(model, tmp_path / "deit.pth")
    assert set(report.resized) == {"pos_embed"} and "[1, 17, 64] -> [1, 65, 64]" in report.resized["pos_embed"]
    expected = resample_abs_pos_embed(vit.pos_embed.detach(), [8, 8], num_prefix_tokens=1)
    assert (model.pos_embed.detach() - expected).abs().max().item() < 1e-6


def test_xvit_pos_grid_resized_bicubic(tmp_path):
    import torch.nn.functional as F

    vit = randomized(VIT)
    torch.save({"model": vit.state_dict()}, tmp_path / "deit.pth")
    model = fresh(XV, pos_grid=8)  # e.g. a 14 x 14 grid from 16 x 16 ImageNet weights: keep grid semantics
    report = load_checkpoint(model, tmp_path / "deit.pth")
    assert "[1, 17, 64] -> [1, 65, 64]" in report.resized["pos_embed"]
    old = vit.pos_embed.detach()
    grid = old[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 64, 64)
    assert torch.equal(model.pos_embed.detach(), torch.cat([old[:, :1], grid], dim=1))


# ------------------------------------------------------------------------------------------- layering

def _imports(path):
    """(module imported, inside a function?) for every import statement of a source file."""
    import ast

    tree = ast.parse(open(path).read())
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                found.append(("." * child.level + (child.module or ""), in_function))
            elif isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names)
            visit(child, inner)
    visit(tree, False)
    return found


def test_models_never_import_the_checkpoint_layer_and_neither_imports_inside_functions():
    """The model layer sits below checkpoint loading: a model file importing `checkpoint` (at the top or, to
    dodge the cycle, inside a function, as `create_model(pretrained=True)` once did) fails here."""
    root = os.path.dirname(videoats.__file__)
    for sub in ("models", "checkpoint"):
        for name in sorted(os.listdir(os.path.join(root, sub))):
            if not name.endswith(".py"):
                continue
            found = _imports(os.path.join(root, sub, name))
            if sub == "models":
                assert not [m for m, _ in found if m in ("..checkpoint", "videoats.checkpoint")
                            or m.startswith(("..checkpoint.", "videoats.checkpoint."))], f"models/{name} imports the checkpoint layer"
            local = [m for m, inside in found if inside and m.startswith(".")]
            assert not local, f"{sub}/{name} imports {local} inside a function"


def test_the_model_layer_builds_only():
    """`pretrained=` belongs to `videoats.create_model` (the checkpoint layer; its loading is tested with the
    zoo); the model layer's `create_model` refuses it in one line rather than ignoring it."""
    from videoats.models import create_model as build_only

    assert videoats.create_model is videoats.checkpoint.create_model
    with pytest.raises(VideoATSError, match="pretrained"):
        build_only(TS, pretrained=True)
