"""EViT and ToMe, the post-attention token reducers, re-stated literally from their specification.

[S] is the team's specification of `selection="evit"` and `selection="tome"` (its sections "budget",
"EViT", "ToMe"). Like `video_ats.py`, which calls these functions from a block, nothing of `videoats` is
imported and a sample's tokens are a dict {(frame, location): vector} holding exactly the present tokens.
Each function here acts on one sample's tokens after the block's attention and residual (`y`), before its
MLP; they are pure, so `tests/test_reducers.py` checks them on small cases worked out by hand.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

import torch

Token = Tuple[int, int]  # (frame, location)
Vectors = Dict[Token, torch.Tensor]


def kept_count(budget: float, present: int, min_tokens: int) -> Optional[int]:
    """[S budget] The patch tokens a row of `present` patch tokens keeps: k = round(budget x (present + 1))
    for a ratio (at most 1), min(budget, present + 1) for a count, at least `min_tokens` (half-to-even
    rounding); the budget binds when k < present + 1 and the row then keeps n = k - 1 (at least 2).
    None when it does not bind (the row keeps everything, nothing is reduced)."""
    k = budget * (present + 1) if budget <= 1 else min(float(budget), float(present + 1))
    k = max(round(k), min_tokens)
    return max(k - 1, 2) if k < present + 1 else None


def _top(candidates: List, score: Dict, n: int) -> Set:
    """[S] The n candidates with the largest score; a tie goes to the earlier candidate in `candidates`."""
    ranked = sorted(range(len(candidates)), key=lambda i: (-float(score[candidates[i]]), i))
    return {candidates[i] for i in ranked[:n]}


def _frames(y: Vectors) -> List[int]:
    return sorted({t for t, _ in y})


def _locations(y: Vectors, t: Optional[int] = None) -> List[int]:
    return sorted({loc for f, loc in y if t is None or f == t})


# ----------------------------------------------------------------------------------------- EViT


def attentiveness(q_cls: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """[S EViT] A frame's CLS attention to its keys k (the CLS first, then the present patches): plain
    softmax of q.k x d^-0.5 over the keys, head by head, averaged over heads; the CLS's own entry left out
    (the patch entries do not sum to one)."""
    d = q_cls.shape[0] // heads
    row = torch.zeros(k.shape[0])
    for h in range(heads):
        c = slice(h * d, (h + 1) * d)
        row = row + torch.softmax((k[:, c] @ q_cls[c]) * d ** -0.5, dim=0)
    return (row / heads)[1:]


def evit_reduce(y: Vectors, a: Dict[Token, torch.Tensor], variant: str, budget: float,
                min_tokens: int) -> Vectors:
    """[S EViT] Keep the most attended patch tokens of each row and fuse the rest of each frame into one.

    Rows: a frame (`frame`, `image`), the clip's locations (`tube`, scored by a summed over frames after
    dividing each frame's a by its patch total), the clip's tokens (`joint`, scored by a). A binding row
    keeps its n best (a tie: the earlier location, or (frame, location) for joint). In each frame the
    present tokens not kept, D_t, if any, become one token f_t = sum_j a[t, j] y[t, j] in the slot of one
    of them: the one with the largest a[t, j] (tube: the dropped location with the largest tube score,
    the same in every frame), a tie to the lower location. Returns the tokens after the reduction."""
    frames = _frames(y)
    if variant == "tube":
        locations = _locations(y)
        n = kept_count(budget, len(locations), min_tokens)
        if n is None:
            return dict(y)
        total = {t: sum(float(a[tok]) for tok in y if tok[0] == t) for t in frames}
        score = {loc: sum(float(a[t, loc]) / total[t] for t in frames if (t, loc) in y) for loc in locations}
        kept_here = _top(locations, score, n)
        kept = {tok for tok in y if tok[1] in kept_here}
        dropped = [loc for loc in locations if loc not in kept_here]
        slot = min(dropped, key=lambda loc: (-score[loc], loc)) if dropped else None

        def slot_of(t, gone):
            return t, slot
    else:
        if variant == "joint":
            here = sorted(y)
            n = kept_count(budget, len(here), min_tokens)
            kept = set(here) if n is None else _top(here, a, n)
        else:  # frame, image: one row per frame
            kept = set()
            for t in frames:
                here = [(t, loc) for loc in _locations(y, t)]
                n = kept_count(budget, len(here), min_tokens)
                kept |= set(here) if n is None else _top(here, a, n)

        def slot_of(t, gone):
            return min(gone, key=lambda tok: (-float(a[tok]), tok[1]))
    out = {tok: y[tok] for tok in y if tok in kept}
    for t in frames:
        gone = [(t, loc) for loc in _locations(y, t) if (t, loc) not in kept]
        if gone:
            out[slot_of(t, gone)] = sum(a[j] * y[j] for j in gone)
    return out


# ----------------------------------------------------------------------------------------- ToMe


def head_mean(k: torch.Tensor, heads: int) -> torch.Tensor:
    """[S ToMe] The matching metric of a token: its key (D,) averaged over heads, (d,) with d = D / heads."""
    return k.reshape(heads, -1).mean(dim=0)


def cosine(x: torch.Tensor, z: torch.Tensor) -> float:
    """Cosine similarity, as ToMe computes it: both normalised, then their dot product."""
    return float((x / x.norm()) @ (z / z.norm()))


def partition(locations: List[int]) -> Tuple[List[int], List[int]]:
    """[S ToMe] (A, B) of a row's present locations: numbered 0, 1, 2, ... in location order, the odd numbers
    are the sources A, the even the destinations B."""
    ordered = sorted(locations)
    return ordered[1::2], ordered[0::2]


def match(sources: List[int], destinations: List[int], sim, r: int) -> Dict[int, int]:
    """[S ToMe] Each source's best destination (largest sim(a, b); a tie: the lower number), then the r
    sources with the largest best similarity (a tie: the lower number). Returns {source: destination}."""
    best = {s: min(destinations, key=lambda b: (-sim(s, b), b)) for s in sources}
    chosen = sorted(sources, key=lambda s: (-sim(s, best[s]), s))[:r]
    return {s: best[s] for s in chosen}


def merge(y: Vectors, size: Dict[Token, float], t: int, pairs: Dict[int, int]) -> None:
    """[S ToMe] In frame t, each destination b takes the size-weighted average of itself and its sources,
    (s_b y_b + sum s_a y_a) / (s_b + sum s_a), and their sizes; the sources become absent."""
    for b in sorted(set(pairs.values())):
        group = [b] + [s for s, dst in sorted(pairs.items()) if dst == b]
        total = sum(size[t, loc] for loc in group)
        y[t, b] = sum(size[t, loc] * y[t, loc] for loc in group) / total
        size[t, b] = total
        for s in group[1:]:
            del y[t, s], size[t, s]


def tome_reduce(y: Vectors, size: Dict[Token, float], metric: Vectors, variant: str, budget: float,
                min_tokens: int) -> Tuple[Vectors, Dict[Token, float]]:
    """[S ToMe] Merge r source tokens of each row into their most similar destinations, within a frame.

    `frame` / `image`: per frame, on its own cosine similarities; r = min(present - n, |A|) when the budget
    binds (n from the frame's present count), else 0. `tube`: rows are locations, sim(a, b) the mean over
    frames of the per-frame cosine similarities, and the same location pairs merge in every frame.
    `joint` is not supported. Returns the tokens and sizes after the block (new dicts)."""
    if variant == "joint":
        raise ValueError("ToMe has no joint variant: it would merge tokens of different frames")
    y, size = dict(y), {tok: size[tok] for tok in y}
    frames = _frames(y)

    def rows(locations):
        n = kept_count(budget, len(locations), min_tokens)
        sources, destinations = partition(locations)
        r = 0 if n is None else max(0, min(len(locations) - n, len(sources)))
        return sources, destinations, r

    if variant == "tube":
        sources, destinations, r = rows(_locations(y))

        def sim(s, b):
            both = [t for t in frames if (t, s) in metric and (t, b) in metric]
            return sum(cosine(metric[t, s], metric[t, b]) for t in both) / len(both)
        pairs = match(sources, destinations, sim, r)
        for t in frames:
            merge(y, size, t, {s: b for s, b in pairs.items() if (t, s) in y})
        return y, size
    for t in frames:
        sources, destinations, r = rows(_locations(y, t))
        pairs = match(sources, destinations, lambda s, b: cosine(metric[t, s], metric[t, b]), r)
        merge(y, size, t, pairs)
    return y, size
