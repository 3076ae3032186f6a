"""Spatiotemporal ATS in TimeSformer (divided space-time) and X-ViT, re-stated literally from its specification.

One sample at a time, in plain loops over samples, blocks, frames and locations. A sample's patch tokens
are a dict {(frame, location): vector}; a token that sampling drops is deleted from it, so every attention
below runs over exactly the keys that are present: no masks, no padding, no slots, no layouts. Nothing of
`videoats` is imported: the reference runs on a model's modules (its weights) and takes the embedded tokens
from `model.embed` (the embedding has no ATS in it and is checked against the original code by
`tests/test_models.py`).

Every rule is stated once, in the function that applies it, with its source:
  [C] the official ATS code (DeiT; `../shared/reference/ats_paper.md` section 1),
  [R] the README's section "What ATS does to a video",
  [D] the docstrings that define the video variants (`videoats/ats/core.py`, `videoats/models/*.py`),
  [T] / [X] the original TimeSformer / X-ViT (`../shared/reference/model_facts.md`, `reference_models.py`),
  [S] the specification of the post-attention reducers `selection="evit"` and `"tome"` (`video_reducers.py`).

It also counts the multiply-adds of what it computes, in fvcore's convention (a linear layer in x out per
token, bias free; LayerNorm 5 per element; q.k^T and attn.v one per channel and pair; the ATS scoring row
one per channel and key; softmax, GELU, norms and adds free): a count of a sample's GFLOPs that shares
nothing with `videoats.flops`. [S] An EViT block also counts its CLS attention row once more (one per
channel and key), a ToMe block its matching (|A| x |B| x head dim per frame).
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn

from .video_reducers import attentiveness, evit_reduce, head_mean, kept_count, tome_reduce

SOFTMAX_EPS = 1e-6  # [C] softmax_with_policy's eps
Token = Tuple[int, int]  # (frame, location)


@dataclass
class Settings:
    """What `ats=dict(...)` says, read as the specification reads it."""

    blocks: Sequence[int]
    tokens: Union[float, Sequence[float]]  # one budget, or one per block in `blocks` order
    variant: str  # tube | frame | joint
    min_tokens: int = 8
    selection: str = "inverse_transform"  # or top_k, random; evit, tome (post-attention reducers, [S])
    seed: int = 0

    def budget(self, block: int) -> float:
        if isinstance(self.tokens, (list, tuple)):
            return self.tokens[list(self.blocks).index(block)]
        return self.tokens


class Macs:
    """Multiply-adds of what the reference computes (fvcore's convention, module docstring)."""

    def __init__(self):
        self.total = 0

    def linear(self, m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        self.total += x.shape[0] * m.in_features * m.out_features
        return m(x)

    def norm(self, m: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        self.total += 5 * x.numel()
        return m(x)


# ----------------------------------------------------------------------------------------- attention


def attention(q, k, v, heads: int, macs: Macs, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax attention of the queries q (nq, D) over exactly the keys k, v (nk, D) given, head by head;
    `bias` (nk,) is added to every query's logits ([S] ToMe's log of each key's size)."""
    d = q.shape[1] // heads
    out = []
    for h in range(heads):
        c = slice(h * d, (h + 1) * d)
        logits = (q[:, c] @ k[:, c].T) * d ** -0.5
        weights = torch.softmax(logits if bias is None else logits + bias, dim=-1)
        out.append(weights @ v[:, c])
    macs.total += 2 * q.shape[0] * k.shape[0] * q.shape[1]
    return torch.cat(out, dim=1)


def significance(q_cls, k, v, heads: int, macs: Macs) -> torch.Tensor:
    """[C score_assignment_step] The scores of a frame's patch tokens from its CLS row: the CLS query's
    attention over the n keys present (the CLS first), with the official smoothed softmax
    (e + eps/n) / (sum e + eps) in fp32, summed over heads, times the L2 norm of each key's value over all
    channels; the CLS's own entry left out. [D] Each frame scores with its own CLS row."""
    d, n = q_cls.shape[0] // heads, k.shape[0]
    row = torch.zeros(n)
    for h in range(heads):
        c = slice(h * d, (h + 1) * d)
        logits = (k[:, c] @ q_cls[c]).float() * d ** -0.5
        e = (logits - logits.max()).exp()
        row = row + (e + SOFTMAX_EPS / n) / (e.sum() + SOFTMAX_EPS)
    macs.total += n * q_cls.shape[0]
    return (row * v.float().norm(dim=1))[1:]


# ----------------------------------------------------------------------------------------- sampling


def draw_count(budget: float, present: int, reference: int, min_tokens: int) -> int:
    """How many targets one inverse transform sample draws; `present` counts the CLS.
    [C] A budget above 1 is a token count, cut to the tokens present; at most 1 it is a ratio of them;
    never under `min_tokens`; rounded. When it does not bind (at least every present token) the official
    code draws `n_ref_tokens - 1`, the candidates of the first ATS stage (`reference` counts the CLS);
    otherwise the budget less the CLS. At least two (one target has no spacing)."""
    k = min(float(present), float(budget)) if budget > 1 else present * float(budget)
    k = round(max(k, float(min_tokens)))
    return max(reference - 1 if k >= present else k - 1, 2)


def inverse_transform(scores: torch.Tensor, draws: int) -> Set[int]:
    """[C] Inverse transform sampling over one row of candidates: normalise the scores, sort them
    ascending, min-max normalise their cumulative sum, draw `draws` evenly spaced targets from the smallest
    non-zero normalised CDF value up to 1 (the official arithmetic), take for each target the candidate
    whose CDF value is nearest (the first on a tie, as argmin), and keep the distinct picks. The official
    de-duplication marks a pick equal to the next sorted pick, and the last pick when it equals 1 (its
    padding value): that one is dropped too. Returns the kept candidates' positions in `scores`."""
    s = scores.float() / scores.float().sum()
    sorted_s, order = torch.sort(s)  # as the official code (torch.sort: equal scores in its order)
    cdf = torch.cumsum(sorted_s, dim=0)
    ncdf = (cdf - cdf.min()) / (cdf.max() - cdf.min())
    start = ncdf[ncdf != 0].min()
    steps = torch.arange(draws, dtype=torch.float32)
    ys = start + (torch.linspace(0, 1.0, draws) * (draws - 1) - start * steps) / (draws - 1)
    picks = sorted(int(torch.argmin((y - ncdf).abs())) for y in ys)
    nexts = picks[1:] + [1]
    return {int(order[p]) for p, nxt in zip(picks, nexts) if p != nxt}


def top_k(scores: torch.Tensor, draws: int) -> Set[int]:
    """[R] The fixed-count baseline (`selection="top_k"`): the `draws` highest-scoring candidates (the
    earlier one on a tie), never one whose score is 0."""
    ranked = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return {i for i in ranked[:draws] if float(scores[i]) > 0}


MASK32 = 2 ** 32 - 1


def mix32(x: int) -> int:
    """[D sampler.random_keys] The 32-bit integer hash: twice x = ((x >> 16) ^ x) * 0x45D9F3B mod 2^32,
    then x ^ (x >> 16)."""
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & MASK32
    return (x >> 16) ^ x


def random_key(seed: int, block: int, sample_index: int, frame: int, location: int, locations: int) -> int:
    """[D sampler.random_keys] A token's key for `selection="random"`: the hash of seed (mixed with the
    block times 0x9E3779B1), the sample's index in the batch, the frame (0 for `tube`: a location's key
    is the same in every frame) and the location, chained, above 24 bits holding the token's index in
    the clip's grid (frame x L0 + location)."""
    h = mix32((seed & MASK32) ^ ((block * 0x9E3779B1) & MASK32))
    for part in (sample_index, frame, location):
        h = mix32(h ^ part)
    return (h << 24) | (frame * locations + location)


def top_keys(keys: List[int], draws: int) -> Set[int]:
    """[R] The random baseline (`selection="random"`): the `draws` candidates with the largest keys, a
    uniformly random subset of the budget's size (keys are distinct)."""
    return set(sorted(range(len(keys)), key=lambda i: -keys[i])[:draws])


def sample(scores: Dict[Token, Union[torch.Tensor, int]], settings: Settings, block: int, frames: int,
           locations: int) -> Set[Token]:
    """[D core.py] Which tokens a sample keeps at an ATS block, from the scores of its present tokens.
    - tube: one draw over the locations present; a location's score is the sum over frames of its
      per-frame score divided by that frame's total (each frame normalised first), and a kept location
      is kept in every frame. The budget counts locations; reference L0 + 1.
    - frame: one draw per frame over its own present tokens; reference L0 + 1.
    - joint: one draw over every present token of the clip; the budget counts tokens over the clip;
      reference T x L0 + 1.
    L0 is the number of locations of the input (the first ATS stage's grid). With `selection="random"`
    the values are the tokens' `random_key`s instead of scores (a tube's location: its key)."""
    random = settings.selection == "random"
    pick = {"top_k": top_k, "random": top_keys}.get(settings.selection, inverse_transform)

    def draw(candidates: List, row: List, reference: int) -> Set:
        n = draw_count(settings.budget(block), len(candidates) + 1, reference, settings.min_tokens)
        return {candidates[i] for i in pick(row if random else torch.stack(row), n)}

    if settings.variant == "tube":
        total = {t: sum(s for (f, _), s in scores.items() if f == t) for t in range(frames)}
        here = sorted({loc for _, loc in scores})
        row = [max(v for (_, where), v in scores.items() if where == loc) if random else
               sum(scores[t, loc] / total[t] for t in range(frames) if (t, loc) in scores) for loc in here]
        kept = draw(here, row, locations + 1)
        return {tok for tok in scores if tok[1] in kept}
    if settings.variant == "joint":
        here = sorted(scores)
        return draw(here, [scores[tok] for tok in here], frames * locations + 1)
    kept = set()
    for t in range(frames):
        here = sorted(tok for tok in scores if tok[0] == t)
        kept |= draw(here, [scores[tok] for tok in here], locations + 1)
    return kept


# ----------------------------------------------------------------------------------------- one frame's attention


def frame_attention(attn, norm, cls, tokens: Dict[Token, torch.Tensor], t: int, macs: Macs, kv_of=None):
    """Normalise and project the CLS and the present tokens of frame t; returns (q, k, v, locations), the
    CLS row first. `kv_of(k, v, locations)` may rewrite keys and values (X-ViT's shift)."""
    here = sorted(loc for f, loc in tokens if f == t)
    x = torch.stack([cls] + [tokens[t, loc] for loc in here])
    q, k, v = macs.linear(attn.qkv, macs.norm(norm, x)).chunk(3, dim=1)
    if kv_of is not None:
        k, v = kv_of(k, v, here)
    return q, k, v, here


def log_sizes(sizes: Dict[Token, float], t: int, here: List[int]) -> torch.Tensor:
    """[S ToMe] Proportional attention: each key's logit gets log of its size (the CLS: size 1), in every
    attention; before any merge every size is 1 and this adds zeros."""
    return torch.tensor([0.0] + [math.log(sizes[t, loc]) for loc in here])


def attend_kept(attn, q, k, v, here: List[int], kept_here: List[int], macs: Macs, bias=None) -> torch.Tensor:
    """[C] After sampling, only the CLS row and the kept tokens' rows of the attention are computed, each
    over every key present before the sample (A^s is (K' + 1) x (N + 1)); then the projection. Returns
    the outputs of the CLS and of `kept_here`, in that order."""
    rows = [0] + [1 + here.index(loc) for loc in kept_here]
    return macs.linear(attn.proj, attention(q[rows], k, v, attn.num_heads, macs, bias))


def sampled_frames(frames_qkv, settings, block, frames, locations, heads, macs, sample_index) -> Set[Token]:
    """[D] Score every frame from its own CLS row (the random baseline scores nothing: it takes the
    tokens' keys), then sample over the clip as the variant says."""
    scores = {}
    for t, (q, k, v, here) in frames_qkv.items():
        if settings.selection == "random":
            frame = 0 if settings.variant == "tube" else t
            for loc in here:
                scores[t, loc] = random_key(settings.seed, block, sample_index, frame, loc, locations)
        else:
            for loc, s in zip(here, significance(q[0], k, v, heads, macs)):
                scores[t, loc] = s
    return sample(scores, settings, block, frames, locations)


def sample_and_attend(blk, block, qkv, tokens, settings, frames, locations, macs, trace, sample_index, sizes):
    """One block's frame attention after its q, k, v (`frame_attention`, per frame): at an ATS block the
    sample first, then the CLS and kept rows, the residual, and the MLP on the kept tokens. Returns (each
    frame's CLS output, the tokens after the block); the caller adds the CLS outputs its own way.
    An EViT / ToMe block reduces after its attention instead (`attend_and_reduce`)."""
    if block in settings.blocks and settings.selection in ("evit", "tome"):
        return attend_and_reduce(blk, block, qkv, tokens, sizes, settings, macs, trace)
    kept = set(tokens)
    if block in settings.blocks:
        kept = sampled_frames(qkv, settings, block, frames, locations, blk.attn.num_heads, macs, sample_index)
        trace[block] = set(kept)
    cls_outs, new = [], {}
    for t, (q, k, v, here) in qkv.items():
        kept_here = [loc for loc in here if (t, loc) in kept]
        out = attend_kept(blk.attn, q, k, v, here, kept_here, macs, log_sizes(sizes, t, here))
        cls_outs.append(out[0])
        for loc, y in zip(kept_here, out[1:]):
            new[t, loc] = tokens[t, loc] + y  # [C] the residual: the kept tokens of the block input
    # [C] the dropped tokens are gone; the MLP runs on the present ones
    for tok in sorted(new):
        new[tok] = new[tok] + mlp(blk, new[tok][None], macs)[0]
    return cls_outs, new


def attend_and_reduce(blk, block, qkv, tokens, sizes, settings, macs, trace):
    """[S "Where they act"] An EViT / ToMe block: every present query (the CLS and every present patch) of
    each frame attends over every present key, as in a dense block, and every present token takes its
    residual; then the reducer turns those tokens into the reduced set, and the MLP runs on it. EViT scores
    with its CLS row computed once more; ToMe matches on the head-averaged keys (X-ViT: shifted, as given).
    `sizes` (ToMe) is updated in place."""
    heads = blk.attn.num_heads
    cls_outs, y, a, metric = [], {}, {}, {}
    for t, (q, k, v, here) in qkv.items():
        out = attend_kept(blk.attn, q, k, v, here, here, macs, log_sizes(sizes, t, here))
        cls_outs.append(out[0])
        for j, loc in enumerate(here):
            y[t, loc] = tokens[t, loc] + out[1 + j]
        if settings.selection == "evit":
            for loc, w in zip(here, attentiveness(q[0], k, heads)):
                a[t, loc] = w
            macs.total += k.shape[0] * k.shape[1]  # [S] the CLS row again: (1 + n_t) x D
        else:
            for j, loc in enumerate(here):
                metric[t, loc] = head_mean(k[1 + j], heads)
            if kept_count(settings.budget(block), len(here), settings.min_tokens) is not None:  # [S] it merges
                macs.total += len(here[1::2]) * len(here[0::2]) * (k.shape[1] // heads)  # [S] |A| x |B| x d
    budget = settings.budget(block)
    if settings.selection == "evit":
        new = evit_reduce(y, a, settings.variant, budget, settings.min_tokens)
    else:
        new, new_sizes = tome_reduce(y, sizes, metric, settings.variant, budget, settings.min_tokens)
        sizes.clear()
        sizes.update(new_sizes)
    trace[block] = set(new)
    for tok in sorted(new):  # [S] the MLP (and its residual) on the reduced set
        new[tok] = new[tok] + mlp(blk, new[tok][None], macs)[0]
    return cls_outs, new


# ----------------------------------------------------------------------------------------- TimeSformer


def _timesformer_sample(model, cls, tokens, settings, frames, locations, macs, trace, sample_index, sizes):
    for i, blk in enumerate(model.blocks):
        # [T] temporal attention at every location over its frames, the CLS left out; [R] a dropped token
        # is no key: only the frames where the location is present take part
        for loc in sorted({loc for _, loc in tokens}):
            ts = [t for t in range(frames) if (t, loc) in tokens]
            x = torch.stack([tokens[t, loc] for t in ts])
            q, k, v = macs.linear(blk.temporal_attn.qkv, macs.norm(blk.temporal_norm1, x)).chunk(3, dim=1)
            bias = torch.tensor([math.log(sizes[t, loc]) for t in ts])  # [S] ToMe's sizes, here too
            out = attention(q, k, v, blk.temporal_attn.num_heads, macs, bias)
            out = macs.linear(blk.temporal_fc, macs.linear(blk.temporal_attn.proj, out))
            for t, y in zip(ts, out):
                tokens[t, loc] = tokens[t, loc] + y
        # [T] spatial attention within every frame, each with its own copy of the CLS
        qkv = {t: frame_attention(blk.attn, blk.norm1, cls, tokens, t, macs) for t in range(frames)}
        cls_outs, tokens = sample_and_attend(blk, i, qkv, tokens, settings, frames, locations, macs, trace,
                                             sample_index, sizes)
        cls = cls + torch.stack(cls_outs).mean(dim=0)  # [T] the frames' CLS outputs averaged
        cls = cls + mlp(blk, cls[None], macs)[0]  # and the one CLS through the MLP
    return macs.linear(model.head, macs.norm(model.norm, cls[None]))[0]


def mlp(blk, x, macs: Macs) -> torch.Tensor:
    h = macs.linear(blk.mlp.fc1, macs.norm(blk.norm2, x))
    return macs.linear(blk.mlp.fc2, blk.mlp.act(h))


# ----------------------------------------------------------------------------------------- X-ViT


def shifted(keys: Dict[Token, torch.Tensor], t: int, loc, fold: int, segments: int) -> torch.Tensor:
    """[X] X-ViT's shift of a key (or value) at frame t and location `loc` ('cls' for the frame's CLS):
    channels [0, fold) come from frame t + 1 and [fold, 2 fold) from frame t - 1 at the same location,
    within groups of `segments` consecutive frames; [R] a zero where that neighbour is outside the group
    or absent (its location dropped there), as at a group's boundary."""
    out = keys[t, loc].clone()
    group = t // segments
    for frm, channels in ((t + 1, slice(0, fold)), (t - 1, slice(fold, 2 * fold))):
        there = frm // segments == group and frm >= 0 and (frm, loc) in keys
        out[channels] = keys[frm, loc][channels] if there else 0.0
    return out


def _xvit_sample(model, cls, tokens, settings, frames, locations, macs, trace, sample_index, sizes):
    fold, segments = model.fold, model.num_segments
    for i, blk in enumerate(model.blocks):
        qkv = {t: frame_attention(blk.attn, blk.norm1, cls[t], tokens, t, macs) for t in range(frames)}
        # the shift needs every frame's keys and values first, by (frame, location)
        ks, vs = {}, {}
        for t, (q, k, v, here) in qkv.items():
            for j, loc in enumerate(["cls"] + here):
                ks[t, loc], vs[t, loc] = k[j], v[j]
        for t, (q, k, v, here) in qkv.items():
            where = ["cls"] + here
            qkv[t] = (q, torch.stack([shifted(ks, t, loc, fold, segments) for loc in where]),
                      torch.stack([shifted(vs, t, loc, fold, segments) for loc in where]), here)
        # [D] scored on the shifted keys and values the CLS attends to
        cls_outs, tokens = sample_and_attend(blk, i, qkv, tokens, settings, frames, locations, macs, trace,
                                             sample_index, sizes)
        cls = [c + out for c, out in zip(cls, cls_outs)]  # [X] each frame keeps its own CLS
        cls = [c + mlp(blk, c[None], macs)[0] for c in cls]
    # [X] per-frame features, then the temporal head: one block over a CLS and the T frames, then an MLP
    feats = macs.norm(model.norm, torch.stack(cls))
    head = model.temporal_head
    z = torch.cat([head.cls_token[0], feats])
    enc = head.encoder
    q, k, v = macs.linear(enc.attn.qkv, macs.norm(enc.norm1, z)).chunk(3, dim=1)
    z = z + macs.linear(enc.attn.proj, attention(q, k, v, enc.attn.num_heads, macs))
    z = z + mlp(enc, z, macs)
    y = z[:1]
    for m in head.mlp:
        y = macs.linear(m, y) if isinstance(m, nn.Linear) else macs.norm(m, y) if isinstance(m, nn.LayerNorm) \
            else m(y)
    return y[0]


# ----------------------------------------------------------------------------------------- the whole model


@dataclass
class Result:
    logits: torch.Tensor  # (B, classes)
    kept: List[Dict[int, Set[Token]]]  # per sample: {ATS block: the (frame, location) tokens present after it}
    gflops: List[float]  # per sample, what the reference computed (module docstring)


@torch.no_grad()
def reference_forward(model, video: torch.Tensor, settings: Settings, xvit: Optional[bool] = None) -> Result:
    """The ATS forward pass of a TimeSformer (divided space-time) or X-ViT `model` on `video`
    (B, 3, T, H, W), one sample at a time."""
    xvit = hasattr(model, "temporal_head") if xvit is None else xvit
    cls_all, grid = model.embed(video)
    b, frames, locations, _ = grid.shape
    conv = model.patch_embed.proj
    patch_macs = sum(m.out_channels * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                     for m in (conv, getattr(model.patch_embed, "proj_context", None)) if m is not None)
    logits, kept, gflops = [], [], []
    for s in range(b):
        macs, trace = Macs(), {}
        macs.total += patch_macs * frames * locations  # the patch embedding of every frame
        tokens = {(t, loc): grid[s, t, loc] for t in range(frames) for loc in range(locations)}
        sizes = {tok: 1.0 for tok in tokens}  # [S] ToMe: every token starts with size 1
        run = _xvit_sample if xvit else _timesformer_sample
        cls = list(cls_all[s]) if xvit else cls_all[s, 0]
        out = run(model, cls, tokens, settings, frames, locations, macs, trace, s, sizes)
        logits.append(out)
        kept.append(trace)
        gflops.append(macs.total / 1e9)
    return Result(torch.stack(logits), kept, gflops)
