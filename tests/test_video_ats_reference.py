"""Spatiotemporal ATS against its literal re-statement (`tests/reference/video_ats.py`).

The reference shares no code with `videoats.ats`: it keeps a sample's tokens as a set of (frame, location),
deletes dropped tokens and computes every attention over exactly the keys present, in loops. Here every
variant of both video backbones, in every execution mode, must keep exactly its tokens at every ATS block
and give its logits, on a batch whose samples keep different counts; and the per-sample GFLOPs must equal
the multiply-adds the reference counted while computing. The post-attention reducers EViT and ToMe
(`selection="evit"`, `"tome"`; ToMe has no `joint`) run through the same matrix.
"""
from __future__ import annotations

import pytest
import torch

import videoats
from videoats import apply_ats
from videoats.errors import VideoATSError
from videoats.ats import token_masks
from videoats.flops import sample_gflops

from reference.video_ats import Settings, draw_count, reference_forward
from reference.video_reducers import kept_count
from test_ats import peaky, video

MODELS = ("timesformer_tiny_8x32", "xvit_tiny_8x32")
VARIANTS = ("tube", "frame", "joint")
BLOCKS = [1, 2, 3]
# budget settings, each meant to exercise one rule (`test_the_settings_exercise_their_rules` checks they do)
SETTINGS = {
    "binds": dict(tokens=0.6),
    "never_binds": dict(tokens=1.0),
    "per_block": dict(tokens=[0.8, 12, 0.4]),
    "min_tokens": dict(tokens=2, min_tokens=6),
    "top_k": dict(tokens=0.6, selection="top_k"),
    "random": dict(tokens=0.6, selection="random", seed=3),
    "evit": dict(tokens=0.6, selection="evit"),
    "tome": dict(tokens=0.75, selection="tome"),
}
UNSUPPORTED = {("joint", "tome")}  # (variant, setting): apply_ats refuses it (`test_joint_tome_is_refused`)
MODES = {  # name: (ATS options, training)
    "masked_training": (dict(drop_tokens=True), True),
    "masked": (dict(drop_tokens=False), False),
    "trim": (dict(mode="trim"), False),
    "static": (dict(mode="static"), False),
}
FRAMES, LOCATIONS = 8, 16  # the tiny models' grid: 8 frames of 4 x 4 patches


def clips():
    """Three random clips, each with a high-contrast band of 1, 2 or 3 patch rows in every frame, so that
    even `tube` (which sums over frames) keeps different counts in them."""
    x = video(3)
    for s in range(3):
        x[s, :, :, : 8 * (s + 1)] *= 4
    return x


def _settings(variant, setting) -> Settings:
    opts = SETTINGS[setting]
    return Settings(BLOCKS, opts["tokens"], variant, opts.get("min_tokens", 8),
                    opts.get("selection", "inverse_transform"), opts.get("seed", 0))


def _model(name, variant, setting, **options):
    torch.manual_seed(0)
    model = peaky(videoats.create_model(name).eval())
    return apply_ats(model, dict(blocks=BLOCKS, variant=variant, **SETTINGS[setting], **options))


_REFERENCE = {}


def _reference(name, variant, setting):
    """The reference's result for a model and setting (the weights are fixed by the seed): computed once."""
    key = (name, variant, setting)
    if key not in _REFERENCE:
        _REFERENCE[key] = reference_forward(_model(name, variant, setting), clips(), _settings(variant, setting))
    return _REFERENCE[key]


def _kept_sets(model):
    """{block: [per sample: set of (frame, location) kept]} from the model's stage masks."""
    return {block: [{(int(t), int(loc)) for t, loc in m.nonzero().tolist()} for m in masks]
            for block, masks in token_masks(model).items()}


def _check(model, expected, training=False, blocks=BLOCKS):
    x = clips()
    model.train(training)
    with torch.set_grad_enabled(training):
        logits = model(x).detach()
    got = _kept_sets(model)
    assert sorted(got) == blocks
    for block in blocks:
        for s in range(3):
            assert got[block][s] == expected.kept[s][block], (block, s)
    # fp32: the same function summed in another order, relative to the logits' size
    scale = max(1.0, float(expected.logits.abs().max()))
    assert (logits - expected.logits).abs().max() <= 1e-5 * scale
    counted = torch.tensor(expected.gflops, dtype=torch.float64)
    assert torch.allclose(sample_gflops(model, x), counted, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", MODELS)
def test_every_mode_keeps_the_reference_tokens_and_logits(name, variant, setting, mode):
    options, training = MODES[mode]
    if (variant, setting) in UNSUPPORTED:
        with pytest.raises(VideoATSError):
            _model(name, variant, setting, **options)
        return
    _check(_model(name, variant, setting, **options), _reference(name, variant, setting), training)


@pytest.mark.slow
@pytest.mark.parametrize("name,variant,mode,setting", [("timesformer_tiny_8x32", "tube", "static", "binds"),
                                                       ("timesformer_tiny_8x32", "frame", "trim", "binds"),
                                                       ("xvit_tiny_8x32", "joint", "static", "binds"),
                                                       ("xvit_tiny_8x32", "frame", "trim", "random")])
def test_the_compiled_sampler_keeps_the_reference_tokens(capture_only, name, variant, mode, setting):
    model = _model(name, variant, setting, mode=mode, sampler="compiled")
    _check(model, _reference(name, variant, setting))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", MODELS)
def test_the_batch_keeps_different_counts(name, variant):
    """A batch whose samples keep the same number of tokens would not test padding: these do."""
    result = _reference(name, variant, "binds")
    counts = {sum(len(kept) for kept in sample.values()) for sample in result.kept}
    assert len(counts) > 1


def test_the_settings_exercise_their_rules():
    """Each budget setting is in the regime it is named for, by the reference's own rules."""
    present, ref = LOCATIONS + 1, LOCATIONS + 1
    # a binding budget draws fewer targets than the official K = N
    assert draw_count(0.6, present, ref, 8) < draw_count(1.0, present, ref, 8) == LOCATIONS
    # min_tokens raises a count budget of 2 tokens
    assert draw_count(2, present, ref, 6) > draw_count(2, present, ref, 0)
    joint = FRAMES * LOCATIONS + 1
    assert draw_count(2, joint, joint, 6) > draw_count(2, joint, joint, 0)
    # per block: the three budgets draw three different counts at full presence
    assert len({draw_count(b, present, ref, 8) for b in SETTINGS["per_block"]["tokens"]}) == 3
    # top-k keeps exactly its count where ATS keeps fewer (the adaptive part)
    for name in MODELS:
        ats, top = _reference(name, "frame", "binds"), _reference(name, "frame", "top_k")
        assert sum(map(len, (s[1] for s in ats.kept))) < sum(map(len, (s[1] for s in top.kept)))


def test_a_dropped_neighbour_gives_xvit_a_zero():
    """The reference's own shift, by hand: frame 1's location 0 takes channels [0, fold) from frame 2 and
    [fold, 2 fold) from frame 0; with frame 2's token gone those channels are zero; across a group of
    `segments` frames nothing comes in."""
    from reference.video_ats import shifted

    keys = {(t, 0): torch.full((8,), float(t + 1)) for t in range(4)}
    assert shifted(keys, 1, 0, fold=2, segments=4).tolist() == [3, 3, 1, 1, 2, 2, 2, 2]
    del keys[2, 0]
    assert shifted(keys, 1, 0, fold=2, segments=4).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]
    assert shifted(keys, 1, 0, fold=2, segments=1).tolist() == [0, 0, 0, 0, 2, 2, 2, 2]


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_keeps_the_budget_count_drawn_by_its_seed(variant):
    """The random baseline is not adaptive: every row keeps the budget's count (the first stage: 9 of 16
    locations or tokens per frame, 76 of the clip's 128; present counts shrink after it), whatever the
    content; the seed decides which tokens, and only the seed."""
    result = _reference("timesformer_tiny_8x32", variant, "random")
    first = {"tube": 9 * FRAMES, "frame": 9 * FRAMES, "joint": 76}[variant]
    assert [len(sample[1]) for sample in result.kept] == [first] * 3
    model = _model("timesformer_tiny_8x32", variant, "random")
    with torch.no_grad():
        model(clips())
    again = _kept_sets(model)
    model.ats.seed = 4
    with torch.no_grad():
        model(clips())
    other = _kept_sets(model)
    assert again[1] == [sample[1] for sample in result.kept]
    assert all(o != a for o, a in zip(other[1], again[1]))


def test_random_keys_draw_every_location_as_often():
    """Over 400 seeds, a one-frame row of 16 keeps each location in about 9 of 16 draws (binomial spread
    0.025; the keys are a fixed function of the seed, so the bound is checked, not hoped for)."""
    from videoats.ats.sampler import random_keys, random_sample

    location = torch.arange(16).view(1, 1, 16)
    hits = torch.zeros(16)
    for seed in range(400):
        index, keep = random_sample(random_keys(seed, 1, location, 16)[0], 9)
        hits[index[keep]] += 1
    assert ((hits / 400 - 9 / 16).abs() < 0.1).all()


@pytest.mark.parametrize("name", MODELS)
def test_joint_tome_is_refused(name):
    """[spec] ToMe's joint would merge tokens of different frames: configuring it is an error."""
    torch.manual_seed(0)
    with pytest.raises(VideoATSError):
        apply_ats(videoats.create_model(name), dict(blocks=BLOCKS, tokens=0.75, variant="joint", selection="tome"))


@pytest.mark.parametrize("name", MODELS)
def test_the_evit_tome_settings_reduce(name):
    """The reducer settings bind at every block, by the reference's counts. EViT keeps n + 1 per row in
    `frame` and `tube` (the fused token; 16 -> 9 + 1, then 10 -> 7 + 1 (min_tokens 8), then 8 -> 7 + 1), the
    same in every sample; `joint` keeps n + the frames that fused, which differs between samples (so the
    padded layouts are exercised). ToMe merges r = present - n in every row (16 -> 12 -> 9 -> 7 per frame):
    its counts are equal across samples by construction; what differs is which tokens merged."""
    assert [kept_count(0.6, p, 8) for p in (16, 10, 8)] == [9, 7, 7]
    assert [kept_count(0.75, p, 8) for p in (16, 12, 9)] == [12, 9, 7]
    for variant in ("frame", "tube"):
        evit, tome = _reference(name, variant, "evit"), _reference(name, variant, "tome")
        assert [[len(s[b]) for b in BLOCKS] for s in evit.kept] == [[FRAMES * 10, FRAMES * 8, FRAMES * 8]] * 3
        assert [[len(s[b]) for b in BLOCKS] for s in tome.kept] == [[FRAMES * 12, FRAMES * 9, FRAMES * 7]] * 3
        assert len({frozenset(s[1]) for s in tome.kept}) > 1  # the samples merged different tokens
    joint = _reference(name, "joint", "evit")
    first = kept_count(0.6, FRAMES * LOCATIONS, 8)  # 76 patches over the clip, + one fused token per frame
    assert [len(s[1]) for s in joint.kept] == [first + FRAMES] * 3
    counts = [sum(len(kept) for kept in s.values()) for s in joint.kept]
    assert len(set(counts)) > 1, counts


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("variant", ["tube", "frame"])
@pytest.mark.parametrize("name", MODELS)
def test_tome_sizes_bias_the_blocks_after_it(name, variant, mode):
    """[spec] Proportional attention holds in every attention once a merge has happened, in blocks that do
    not reduce too: ToMe at block 1 alone (0.5: 16 -> 8 tokens per frame), then blocks 2 and 3 dense over
    the merged tokens with log(size) on their keys (spatial, and TimeSformer's temporal)."""
    options, training = MODES[mode]
    torch.manual_seed(0)
    model = apply_ats(peaky(videoats.create_model(name).eval()),
                      dict(blocks=[1], tokens=0.5, variant=variant, selection="tome", **options))
    key = (name, variant, "tome_block_1")
    if key not in _REFERENCE:
        _REFERENCE[key] = reference_forward(model, clips(), Settings([1], 0.5, variant, 8, "tome"))
    assert [len(s[1]) for s in _REFERENCE[key].kept] == [FRAMES * 8] * 3
    _check(model, _REFERENCE[key], training, blocks=[1])
