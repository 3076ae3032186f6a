"""EViT and ToMe (`selection="evit"`, `"tome"`) on small cases worked out by hand.

Each case is a 2 x 4 grid (2 frames of 4 locations; a few use one frame) whose answer is derived in the
comments from the specification of the reducers alone. Every case runs twice: on the literal reference
(`tests/reference/video_reducers.py`, the oracle of `test_video_ats_reference.py`) and on the pure functions
of the implementation (`videoats/ats/reducers.py`, through the adapters below), so both are pinned to the same
hand-made answers.

Tokens are one-hot: y[t, l] = e_(4t + l) in R^8 (e_(6l') for the 1 x 6 row), so a fused or merged value reads
as its weights: 0.0625 e2 + 0.0625 e3 is "a = 1/16 on (0, 2) and (0, 3)".
"""
from __future__ import annotations

import math

import pytest
import torch

import videoats
from videoats.flops import analytic_gflops, sample_gflops
from reference.video_reducers import attentiveness, evit_reduce, kept_count, tome_reduce

# ----------------------------------------------------------------------------------------- adapters


def _grid(tokens, locations=None):
    frames = max(t for t, _ in tokens) + 1
    locations = locations or max(loc for _, loc in tokens) + 1
    valid = torch.zeros(1, frames, locations, dtype=torch.bool)
    for t, loc in tokens:
        valid[0, t, loc] = True
    return frames, locations, valid


def _stack(values, frames, locations, dim=None):
    """{(t, l): value} -> (1, T, L[, dim]) with zeros where absent."""
    shape = (1, frames, locations) + ((dim,) if dim else ())
    out = torch.zeros(shape)
    for (t, loc), v in values.items():
        out[0, t, loc] = v
    return out


def _unstack(grid, keep):
    return {(t, loc): grid[0, t, loc] for t, loc in keep[0].nonzero().tolist()}


def videoats_evit(y, a, variant, budget, min_tokens):
    from videoats.ats.reducers import evit_plan, merge

    frames, locations, valid = _grid(y)
    dim = next(iter(y.values())).shape[0]
    plan = evit_plan(_stack(a, frames, locations), valid, variant, budget, locations, min_tokens)
    return _unstack(merge(_stack(y, frames, locations, dim), plan), plan.keep)


def videoats_tome(y, size, metric, variant, budget, min_tokens):
    from videoats.ats.reducers import merge, tome_merge_count, tome_plan

    if variant == "joint":
        raise ValueError("ToMe has no joint variant")
    frames, locations, valid = _grid(y)
    counts = {int(c) for c in (valid.any(dim=1).sum(dim=1) if variant == "tube" else valid.sum(dim=2)).flatten()}
    assert len(counts) == 1, "the implementation's plan wants the same count in every row"
    present = counts.pop()
    r = tome_merge_count(present, budget, min_tokens)
    dim, d = next(iter(y.values())).shape[0], next(iter(metric.values())).shape[0]
    plan = tome_plan(_stack(metric, frames, locations, d), valid, _stack(size, frames, locations), variant,
                     present, r)
    out = _unstack(merge(_stack(y, frames, locations, dim), plan), plan.keep)
    return out, {tok: float(plan.sizes[0, tok[0], tok[1]]) for tok in out}


def reference_tome(y, size, metric, variant, budget, min_tokens):
    out, sizes = tome_reduce(y, size, metric, variant, budget, min_tokens)
    return out, {tok: float(s) for tok, s in sizes.items()}


EVIT = {"reference": evit_reduce, "videoats": videoats_evit}
TOME = {"reference": reference_tome, "videoats": videoats_tome}


def _e(i, dim=8):
    out = torch.zeros(dim)
    out[i] = 1.0
    return out


def _one_hot(frames=2, locations=4, dim=8):
    return {(t, loc): _e(locations * t + loc, dim) for t in range(frames) for loc in range(locations)}


def _assert_tokens(got, expected):
    assert sorted(got) == sorted(expected)
    for tok in expected:
        assert torch.allclose(got[tok].float(), expected[tok], atol=1e-6), (tok, got[tok], expected[tok])


# ----------------------------------------------------------------------------------------- the budget


@pytest.mark.parametrize("budget,present,min_tokens,n", [
    (0.6, 16, 8, 9),      # round(0.6 x 17 = 10.2) = 10 tokens with the CLS -> 9 patches
    (0.75, 16, 8, 12),    # round(12.75) = 13 -> 12
    (1.0, 16, 8, None),   # 17 = every token: does not bind
    (0.5, 8, 0, 3),       # round(4.5) = 4 (half to even; half up would keep 4 patches) -> 3
    (2, 16, 6, 5),        # a count of 2, raised to min_tokens 6 -> 5
    (0.1, 4, 0, 2),       # round(0.5) = 0 -> at least 2 patches
    (16, 16, 8, 15),      # a count under present + 1 binds
    (17, 16, 8, None),    # a count of every token does not
    (0.6, 8, 8, 7),       # round(5.4) = 5, raised to 8 < 9: binds by one token
])
def test_the_budget_of_evit_tome_rows(budget, present, min_tokens, n):
    assert kept_count(budget, present, min_tokens) == n
    from videoats.ats.reducers import tome_merge_count

    # ToMe's r is present - n capped by |A| = present // 2 (0 when the budget does not bind)
    assert tome_merge_count(present, budget, min_tokens) == (0 if n is None else min(present - n, present // 2))


# ----------------------------------------------------------------------------------------- EViT


def test_evit_attentiveness_by_hand():
    # 2 heads of d = 1 (scale 1), q_cls = (1, 1), keys CLS (0, 0), p1 (ln 3, 0), p2 (0, ln 3):
    # head 0 logits 0, ln 3, 0 -> softmax 1/5, 3/5, 1/5; head 1: 1/5, 1/5, 3/5; mean 1/5, 2/5, 2/5.
    # The patch entries are 2/5 and 2/5 (the CLS keeps 1/5: they do not sum to one).
    q = torch.tensor([1.0, 1.0])
    k = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [0.0, math.log(3)]])
    assert torch.allclose(attentiveness(q, k, 2), torch.tensor([0.4, 0.4]), atol=1e-6)
    from videoats.ats.reducers import cls_attention

    got = cls_attention(q.view(1, 2, 1, 1), k.T.reshape(1, 2, 3, 1), scale=1.0)
    assert torch.allclose(got, torch.tensor([[0.4, 0.4]]), atol=1e-6)
    # an absent key is not in the softmax: without p2, head 0 is 1/4, 3/4; head 1 1/2, 1/2 -> p1 5/8
    valid = torch.tensor([[True, True, False]])
    got = cls_attention(q.view(1, 2, 1, 1), k.T.reshape(1, 2, 3, 1), scale=1.0, key_valid=valid)
    assert torch.allclose(got[:, :1], torch.tensor([[0.625]]), atol=1e-6)
    assert torch.allclose(attentiveness(q, k[:2], 2), torch.tensor([0.625]), atol=1e-6)


# a[t, l]: frame 0 sums to 1/2 (the CLS holds the rest), frame 1 to 1/8; (1, 1) has 0 (an extreme, allowed)
A_HAND = {(0, 0): 0.25, (0, 1): 0.125, (0, 2): 0.0625, (0, 3): 0.0625,
          (1, 0): 1 / 64, (1, 1): 0.0, (1, 2): 3 / 64, (1, 3): 1 / 16}
A_HAND = {tok: torch.tensor(v) for tok, v in A_HAND.items()}
E = {i: _e(i) for i in range(8)}


@pytest.mark.parametrize("impl", list(EVIT))
def test_evit_frame_keeps_and_fuses_by_hand(impl):
    # budget: a count of 3 tokens per frame (CLS included), 4 present -> binds, n = 2 patches kept.
    # frame 0: a = 1/4, 1/8, 1/16, 1/16 -> keeps 0, 1; drops 2, 3 (tied at 1/16: the fused slot is the lower
    #   location, 2); f = 1/16 e2 + 1/16 e3 in slot (0, 2).
    # frame 1: a = 1/64, 0, 3/64, 1/16 -> keeps 3, 2; drops 0, 1 -> slot 0 (1/64 > 0); f = 1/64 e4 + 0 e5.
    # Each frame keeps n + 1 = 3 tokens.
    got = EVIT[impl](_one_hot(), A_HAND, "frame", 3, 0)
    _assert_tokens(got, {(0, 0): E[0], (0, 1): E[1], (0, 2): E[2] / 16 + E[3] / 16,
                         (1, 0): E[4] / 64, (1, 2): E[6], (1, 3): E[7]})


@pytest.mark.parametrize("impl", list(EVIT))
def test_evit_tube_normalises_each_frame_by_hand(impl):
    # budget: a count of 3 over the clip's 4 locations -> n = 2 locations.
    # per-frame normalised: frame 0 / (1/2) = 1/2, 1/4, 1/8, 1/8; frame 1 / (1/8) = 1/8, 0, 3/8, 1/2;
    # tube score = 5/8, 1/4, 1/2, 5/8 -> keeps locations 0 and 3 (raw sums 17/64, 8/64, 7/64, 8/64 would keep
    # 0 and 1). Dropped 1, 2: the fused slot is the one with the larger tube score, 2, in both frames:
    # frame 0: f = 1/8 e1 + 1/16 e2; frame 1: f = 0 e5 + 3/64 e6. 2 + 1 locations in every frame.
    got = EVIT[impl](_one_hot(), A_HAND, "tube", 3, 0)
    _assert_tokens(got, {(0, 0): E[0], (0, 3): E[3], (0, 2): E[1] / 8 + E[2] / 16,
                         (1, 0): E[4], (1, 3): E[7], (1, 2): E[6] * 3 / 64})


@pytest.mark.parametrize("impl", list(EVIT))
def test_evit_joint_keeps_over_the_clip_by_hand(impl):
    # budget: a count of 4 over the clip's 8 tokens -> n = 3: (0, 0) 1/4, (0, 1) 1/8, then 1/16 tied by
    # (0, 2), (0, 3), (1, 3): the first in (frame, location) order, (0, 2).
    # frame 0 drops (0, 3) alone: it is fused on its own, 1/16 e3, in its own slot.
    # frame 1 drops everything: one fused token in the slot of its largest a, (1, 3):
    # 1/64 e4 + 0 e5 + 3/64 e6 + 1/16 e7. Kept: n + 2 fusing frames = 5.
    got = EVIT[impl](_one_hot(), A_HAND, "joint", 4, 0)
    _assert_tokens(got, {(0, 0): E[0], (0, 1): E[1], (0, 2): E[2], (0, 3): E[3] / 16,
                         (1, 3): E[4] / 64 + E[6] * 3 / 64 + E[7] / 16})


@pytest.mark.parametrize("variant", ["frame", "tube", "joint"])
@pytest.mark.parametrize("impl", list(EVIT))
def test_evit_a_budget_that_does_not_bind_keeps_every_token(impl, variant):
    # a count of 5 = 4 patches + CLS per frame or tube row; joint's row has 8 + 1 (ratio 1.0 the same)
    for budget in ([5, 1.0] if variant != "joint" else [9, 1.0]):
        _assert_tokens(EVIT[impl](_one_hot(), A_HAND, variant, budget, 0), _one_hot())


# ----------------------------------------------------------------------------------------- ToMe

# metric (keys averaged over heads, d = 2). Destinations B: locations 0, 2 (numbers 0, 2); sources A: 1, 3.
M_HAND = {(0, 0): (1, 0), (0, 1): (1, 1), (0, 2): (0, 1), (0, 3): (0, 2),
          (1, 0): (0, 1), (1, 1): (0, 3), (1, 2): (1, 0), (1, 3): (2, 0)}
M_HAND = {tok: torch.tensor(v, dtype=torch.float32) for tok, v in M_HAND.items()}
# cosines: frame 0: cos(1, 0) = cos(1, 2) = 1/sqrt 2 (a tie), cos(3, 0) = 0, cos(3, 2) = 1
#          frame 1: cos(1, 0) = 1, cos(1, 2) = 0, cos(3, 0) = 0, cos(3, 2) = 1
SIZES = {(t, loc): 1.0 for t in range(2) for loc in range(4)}
SIZES[0, 3], SIZES[1, 0] = 3.0, 2.0  # as if earlier blocks had merged into them


@pytest.mark.parametrize("impl", list(TOME))
def test_tome_frame_merges_its_best_match_by_hand(impl):
    # a count of 4 per frame: binds, n = 3, r = min(4 - 3, |A| = 2) = 1 per frame.
    # frame 0: source 1's best destination is 0 (tied with 2 at 1/sqrt 2: the lower number), best 0.707;
    #   source 3 -> 2 at 1: the better matched, so 3 merges into 2: (s2 y2 + s3 y3) / (s2 + s3) =
    #   (1 e2 + 3 e3) / 4, size 4.
    # frame 1: sources 1 -> 0 and 3 -> 2 both at 1: the tie goes to the lower number, 1, into 0:
    #   (2 e4 + 1 e5) / 3, size 3.
    got, sizes = TOME[impl](_one_hot(), SIZES, M_HAND, "frame", 4, 0)
    _assert_tokens(got, {(0, 0): E[0], (0, 1): E[1], (0, 2): (E[2] + 3 * E[3]) / 4,
                         (1, 0): (2 * E[4] + E[5]) / 3, (1, 2): E[6], (1, 3): E[7]})
    assert sizes == {(0, 0): 1, (0, 1): 1, (0, 2): 4, (1, 0): 3, (1, 2): 1, (1, 3): 1}


@pytest.mark.parametrize("impl", list(TOME))
def test_tome_tube_matches_on_the_mean_similarity_by_hand(impl):
    # a count of 4 over the 4 locations: n = 3, r = 1. Mean over frames: sim(1, 0) = (0.707 + 1) / 2 = 0.854,
    # sim(1, 2) = 0.354, sim(3, 0) = 0, sim(3, 2) = 1: source 3 -> 2 is the best, merged in BOTH frames
    # (frame 1 alone would have merged 1 into 0): frame 0 (e2 + 3 e3) / 4 size 4, frame 1 (e6 + e7) / 2 size 2.
    # With the frames' metrics swapped the mean is the same, so is the answer (frame 0 alone would now say 1 -> 0).
    swapped = {(1 - t, loc): m for (t, loc), m in M_HAND.items()}
    for metric in (M_HAND, swapped):
        got, sizes = TOME[impl](_one_hot(), SIZES, metric, "tube", 4, 0)
        _assert_tokens(got, {(0, 0): E[0], (0, 1): E[1], (0, 2): (E[2] + 3 * E[3]) / 4,
                             (1, 0): E[4], (1, 1): E[5], (1, 2): (E[6] + E[7]) / 2})
        assert sizes == {(0, 0): 1, (0, 1): 1, (0, 2): 4, (1, 0): 2, (1, 1): 1, (1, 2): 2}


@pytest.mark.parametrize("impl", list(TOME))
def test_tome_merges_every_source_it_may_by_hand(impl):
    # a count of 3 per frame: n = 2, r = min(2, 2) = 2: every source merges into its best destination.
    # frame 0: 1 -> 0 (the tie) and 3 -> 2; frame 1: 1 -> 0 and 3 -> 2.
    got, sizes = TOME[impl](_one_hot(), SIZES, M_HAND, "frame", 3, 0)
    _assert_tokens(got, {(0, 0): (E[0] + E[1]) / 2, (0, 2): (E[2] + 3 * E[3]) / 4,
                         (1, 0): (2 * E[4] + E[5]) / 3, (1, 2): (E[6] + E[7]) / 2})
    assert sizes == {(0, 0): 2, (0, 2): 4, (1, 0): 3, (1, 2): 2}


@pytest.mark.parametrize("impl", list(TOME))
def test_tome_sources_share_a_destination_and_r_is_capped_by_a(impl):
    # one frame of 6: B = 0, 2, 4 = (1, 0), (0, 1), (-1, 0); A = 1 (1, 0), 3 (2, 1), 5 (-1, 1), sizes 2, 1, 1.
    # best: 1 -> 0 (cos 1), 3 -> 0 (0.894 over 0.447), 5 -> 2 (0.707, tied with 4: the lower number).
    # a count of 2: n = 2, present - n = 4 > |A| = 3 -> r = 3: 0 takes (1 e0 + 2 e1 + 1 e3) / 4, size 4;
    # 2 takes (e2 + e5) / 2, size 2; 4 stays. 6 - 3 = 3 tokens.
    vectors = [(1, 0), (1, 0), (0, 1), (2, 1), (-1, 0), (-1, 1)]
    metric = {(0, loc): torch.tensor(v, dtype=torch.float32) for loc, v in enumerate(vectors)}
    sizes = {(0, loc): 1.0 for loc in range(6)}
    sizes[0, 1] = 2.0
    y = _one_hot(1, 6, 6)
    e = {i: _e(i, 6) for i in range(6)}
    got, new_sizes = TOME[impl](y, sizes, metric, "frame", 2, 0)
    _assert_tokens(got, {(0, 0): (e[0] + 2 * e[1] + e[3]) / 4, (0, 2): (e[2] + e[5]) / 2, (0, 4): e[4]})
    assert new_sizes == {(0, 0): 4, (0, 2): 2, (0, 4): 1}


@pytest.mark.parametrize("impl", list(TOME))
def test_tome_partitions_by_present_rank_by_hand(impl):
    # one frame whose location 0 is gone: present 1, 2, 3 are numbered 0, 1, 2 -> B = {1, 3}, A = {2}
    # (by location parity it would be B = {2}, A = {1, 3}). metric 1 (1, 0), 2 (1, 0.5), 3 (0, 1):
    # cos(2, 1) = 0.894 > cos(2, 3) = 0.447. A count of 3: 3 < 4 binds, n = 2, r = min(1, 1) = 1:
    # 2 merges into 1: (e1 + e2) / 2, size 2; 3 stays.
    y = {(0, loc): E[loc] for loc in (1, 2, 3)}
    metric = {(0, 1): torch.tensor([1.0, 0.0]), (0, 2): torch.tensor([1.0, 0.5]), (0, 3): torch.tensor([0.0, 1.0])}
    got, sizes = TOME[impl](y, {tok: 1.0 for tok in y}, metric, "frame", 3, 0)
    _assert_tokens(got, {(0, 1): (E[1] + E[2]) / 2, (0, 3): E[3]})
    assert sizes == {(0, 1): 2, (0, 3): 1}


@pytest.mark.parametrize("variant", ["frame", "tube"])
@pytest.mark.parametrize("impl", list(TOME))
def test_tome_a_budget_that_does_not_bind_merges_nothing(impl, variant):
    for budget in (5, 1.0):
        got, sizes = TOME[impl](_one_hot(), SIZES, M_HAND, variant, budget, 0)
        _assert_tokens(got, _one_hot())
        assert sizes == SIZES


@pytest.mark.parametrize("impl", list(TOME))
def test_tome_has_no_joint_variant(impl):
    with pytest.raises(ValueError):
        TOME[impl](_one_hot(), SIZES, M_HAND, "joint", 4, 0)


# ----------------------------------------------------------------------------------------- the models

MODELS = ("timesformer_tiny_8x32", "xvit_tiny_8x32")
MODES = {  # name: (options, training), as tests/test_video_ats_reference.py
    "masked_training": (dict(drop_tokens=True), True),
    "masked": (dict(drop_tokens=False), False),
    "trim": (dict(mode="trim"), False),
    "static": (dict(mode="static"), False),
}
KEEP_ALL = [("evit", "tube"), ("evit", "frame"), ("evit", "joint"), ("tome", "tube"), ("tome", "frame")]


@pytest.mark.parametrize("selection,variant", KEEP_ALL)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", MODELS)
def test_evit_tome_that_keep_everything_are_the_dense_model(name, mode, selection, variant):
    """A budget that never binds (tokens=1.0) reduces nothing: every token is present after every block,
    and the logits are the dense model's (ToMe's sizes stay 1: log 1 = 0 adds nothing). So is the cost, but for
    what the reducer still computes: EViT reads the CLS attention row at every EViT block ((1 + L) x D per frame);
    ToMe, merging nothing, matches nothing."""
    from test_ats import peaky, video
    from videoats.ats import token_masks

    options, training = MODES[mode]
    torch.manual_seed(0)
    model = peaky(videoats.create_model(name))
    x = video(3)
    model.train(training)
    with torch.set_grad_enabled(training):
        dense = model(x).detach()
        videoats.apply_ats(model, dict(blocks=[1, 2, 3], tokens=1.0, variant=variant, selection=selection,
                                       **options))
        model.train(training)
        got = model(x).detach()
    masks = token_masks(model)
    assert sorted(masks) == [1, 2, 3] and all(bool(m.all()) for m in masks.values())
    assert (got - dense).abs().max() <= 1e-5 * max(1.0, float(dense.abs().max()))
    frames, locations, width = 8, 16, 64  # the tiny models' grid and width
    extra = 3 * frames * (1 + locations) * width if selection == "evit" else 0
    expected = analytic_gflops(model) + extra / 1e9
    assert torch.allclose(sample_gflops(model, x), torch.tensor(expected, dtype=torch.float64),
                          rtol=1e-12, atol=0)


@pytest.mark.parametrize("selection", ["evit", "tome"])
@pytest.mark.parametrize("name", MODELS)
def test_activation_checkpointing_reruns_a_reducing_block_alike(name, selection):
    """Training with activation checkpointing runs every block again in backward, after the later blocks moved
    ToMe's host state (token count, sizes) on: the re-run must start from the state its first run had, so the
    gradients are those of training without checkpointing."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = videoats.create_model(name)
        videoats.apply_ats(model, dict(blocks=[1, 2, 3], tokens=0.6, selection=selection, variant="frame"))
        model.train().set_grad_checkpointing(checkpointing)
        torch.manual_seed(1)
        model(torch.randn(2, 3, 8, 32, 32)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)
