"""ATS for any backbone: which rows of scores form a sample, and how kept tokens are laid out.

Every backbone keeps its patch tokens on a grid `(B, T, L)`: T frames (1 for images) and L slots that
are the same spatial locations in every frame, so temporal attention (TimeSformer) and the frame shift
(X-ViT) stay aligned. A boolean `valid` mask of that shape says which tokens are present. After an ATS
block samples, the grid is either masked (training: every slot stays, dropped tokens become absent) or
pruned (inference: dropped tokens leave the grid). Both compute the same function, since absent tokens
are never keys, never queries that matter, never shifted. Pruning keeps one of two layouts:
- aligned (`image`, `tube`): slot j is the same location in every frame; only locations kept somewhere stay,
  padded to the batch's largest count.
- ragged (`frame`, `joint`): every frame packs its own kept tokens to the left, padded to the largest
  per-frame count, so spatial attention and token-wise layers only see (about) the kept tokens. Slot j is
  then a different location in each frame, and whatever mixes frames at one location (TimeSformer's
  temporal attention, X-ViT's shift) runs on a location-aligned copy (`Layout.aligned`) over the locations
  some frame kept.

Variants (what one inverse transform sample covers):
- `image`: one per image (T = 1), the official DeiT-S setting.
- `tube`: one per clip over the L locations, with each location's per-frame scores (normalised per frame)
  summed, so the same locations are kept in every frame: dense temporal attention and shift, the
  cheapest to run (no padding); the budget counts locations.
- `frame`: one per frame from its own CLS row; frames keep different locations (ragged layout, absent
  tokens masked in temporal mixing); the budget counts tokens per frame.
- `joint`: one per clip over all T x L tokens, so frames with more content keep more tokens; laid out
  like `frame`; the budget counts tokens over the clip.
A budget ("tokens") always counts the CLS token too, as in the official code (DeiT-S: 197 = all).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..errors import VideoATSError
from .layout import GATHER_BELOW, Layout, SlotGather, gather_slots
from .reducers import (Reduction, cls_attention, evit_plan, size_biased, tome_merge_count,
                       tome_plan)
from .sampler import max_kept, random_keys
from .stage import arrange, key_masks, maybe_compiled, plan_layout, present_rows, score_and_select, temporal_mask

VARIANTS = ("image", "tube", "frame", "joint")
MODES = ("trim", "static")
SAMPLERS = ("eager", "compiled")
SELECTIONS = ("inverse_transform", "top_k", "random", "evit", "tome")
# selections that let a block attend over every token and reduce them after attention, before the MLP
AFTER_ATTENTION = ("evit", "tome")
# selections that compute the CLS attention row at a stage block to decide (ATS and top-k score with it, EViT
# ranks by it); random draws and ToMe matches keys without it
SCORED = ("inverse_transform", "top_k", "evit")
# how tables, plots and messages name a selection
METHOD_NAMES = {"inverse_transform": "ATS", "top_k": "top-k", "random": "random", "evit": "EViT", "tome": "ToMe"}
OPTIONS = ("blocks", "tokens", "variant", "drop_tokens", "min_tokens", "mode", "sampler", "selection", "seed")


@dataclass
class ATSConfig:
    blocks: Sequence[int]
    tokens: Union[float, Sequence[float]] = 1.0  # 1.0: the budget never binds (the official K = N)
    variant: Optional[str] = None  # None: image for image models, tube for video models
    drop_tokens: bool = True  # prune in eval mode; training always masks
    min_tokens: int = 8
    mode: str = "trim"  # pruned layout: trim (pad to the batch's largest count) | static (widths from the budget)
    sampler: str = "eager"  # eager | compiled: each stage's tensor work as torch.compile'd functions
    # inverse_transform (ATS) | top_k: the fixed-count baseline, the budget's highest-scoring tokens every time |
    # random: the budget's count of tokens drawn uniformly at random (`seed`; the same in every layout) |
    # evit, tome: the reducers that act after attention (`reducers.py`)
    selection: str = "inverse_transform"
    seed: int = 0

    @classmethod
    def from_any(cls, ats) -> "ATSConfig":
        if isinstance(ats, ATSConfig):
            return ats
        if isinstance(ats, dict):
            if not ats:
                raise VideoATSError("ats={} names no block: give dict(blocks=[...], ...) to turn ATS on, or "
                                    "ats=None for the dense model")
            unknown = set(ats) - set(OPTIONS)
            if unknown:
                raise VideoATSError(f"unknown ATS option(s) {sorted(unknown)}; known: {', '.join(OPTIONS)}")
            return cls(**ats)
        raise VideoATSError(f"ats must be a dict or ATSConfig, got {type(ats).__name__}")

    def budget(self, block: int) -> float:
        if isinstance(self.tokens, (list, tuple)):
            return self.tokens[list(self.blocks).index(block)]
        return self.tokens

    def check(self, depth: int, num_frames: int, num_patches: int, video: bool) -> "ATSConfig":
        """Resolve the default variant and refuse values that cannot work, naming them."""
        variant = self.variant or ("tube" if video else "image")
        if variant not in VARIANTS:
            raise VideoATSError(f"unknown ATS variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if not video and variant != "image":
            raise VideoATSError(f"ATS variant {variant!r} needs a video model; image models use 'image'")
        if video and variant == "image":
            variant = "frame"  # an image sampler per frame is the frame variant
        blocks = [int(b) for b in self.blocks]
        if not blocks:
            raise VideoATSError("ATS needs at least one block in `blocks`")
        bad = [b for b in blocks if not 0 <= b < depth]
        if bad:
            raise VideoATSError(f"ATS blocks {bad} out of range: the model has blocks 0..{depth - 1}")
        if len(set(blocks)) != len(blocks):
            raise VideoATSError(f"ATS blocks {blocks} repeat a block")
        if self.mode not in MODES:
            raise VideoATSError(f"unknown ATS mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.sampler not in SAMPLERS:
            raise VideoATSError(f"unknown ATS sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.selection not in SELECTIONS:
            raise VideoATSError(f"unknown ATS selection {self.selection!r}; choose one of {', '.join(SELECTIONS)}")
        if self.selection == "tome" and variant == "joint":
            raise VideoATSError("selection 'tome' merges tokens within a frame (the same number in every frame, so "
                                "the T x L grid stays); 'joint' would merge across frames: use variant 'frame' or "
                                "'tube'")
        tokens = self.tokens
        if isinstance(tokens, (list, tuple)) and len(tokens) != len(blocks):
            raise VideoATSError(f"ATS tokens {list(tokens)}: give one value or one per block ({len(blocks)})")
        most = group_size(variant, num_frames, num_patches) + 1
        for t in tokens if isinstance(tokens, (list, tuple)) else [tokens]:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0 or t > most:
                raise VideoATSError(f"ATS token budget {t!r} must be a ratio in (0, 1] or a count up to "
                                    f"{most} (the tokens of one {variant} sample, CLS included)")
        if isinstance(tokens, (list, tuple)):  # the i-th budget belongs to the i-th block as given
            tokens = [t for _, t in sorted(zip(blocks, tokens))]
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 32:
            raise VideoATSError(f"ATS seed {self.seed!r} must be an integer in [0, 2^32)")
        return ATSConfig(sorted(blocks), tokens, variant, bool(self.drop_tokens), int(self.min_tokens), self.mode,
                         self.sampler, self.selection, self.seed)

    def to_dict(self) -> dict:
        """Plain types, as results files record the setting."""
        tokens = list(self.tokens) if isinstance(self.tokens, (list, tuple)) else self.tokens
        return {"variant": self.variant, "blocks": list(self.blocks), "tokens": tokens,
                "drop_tokens": bool(self.drop_tokens), "min_tokens": int(self.min_tokens), "mode": self.mode,
                "sampler": self.sampler, "selection": self.selection, "seed": int(self.seed)}

    def label(self) -> str:
        """`ATS variant blocks a-b tokens t` (`top-k ...`, `random ...` for the baselines): how plots and
        tables name a setting."""
        b = list(self.blocks)
        blocks = f"{b[0]}-{b[-1]}" if b == list(range(b[0], b[-1] + 1)) and len(b) > 1 else ",".join(map(str, b))
        tokens = self.tokens if not isinstance(self.tokens, (list, tuple)) else "/".join(map(str, self.tokens))
        method = METHOD_NAMES[self.selection]
        return f"{method} {self.variant} b{blocks} k{tokens}"


def group_size(variant: str, num_frames: int, num_patches: int) -> int:
    """Candidates in one sample at the first ATS stage."""
    return num_frames * num_patches if variant == "joint" else num_patches


RAGGED = ("frame", "joint")


@dataclass
class StageRecord:
    block: int
    mask: Tensor  # (B, T, L0) bool over the original locations: tokens present after this stage
    padded_slots: int  # slots per frame actually computed after this stage (batch maximum)
    aligned_slots: int  # locations temporal mixing runs over after this stage (= padded_slots unless ragged)
    rows: Optional[int] = None  # patch-token rows per sample token-wise layers computed after this stage,
    # padding included (every slot, or the static bound), None: only the present tokens

    @property
    def kept(self) -> Tensor:
        """Patch tokens kept per sample, over all frames."""
        return self.mask.flatten(1).sum(dim=1)


class SamplingRun:
    """The state of one forward pass: which original location each slot holds, and what was kept.

    Shapes after a stage come from the host in one of two ways (`ATSConfig.mode`, pruned layout only):
    - `trim`: padded to the batch's largest kept count, read from the device once per stage;
    - `static`: fixed by the budget and the grid (`max_kept`), so nothing is read from the device and the
      forward pass can be captured whole (CUDA graphs, `torch.compile(fullgraph=True)`); slots beyond a
      sample's kept count are masked.
    Token-wise layers compute every slot when the slots are nearly all present (`GATHER_BELOW`), else they
    gather the present tokens: in `trim` exactly those, whose number came with the widths (no extra read);
    in `static` padded to the most a sample can keep. That bound matters for `joint`: one frame may keep
    every location, so its grid stays as wide as the first, while the clip keeps the budget's share.
    Both keep the same tokens, so their outputs agree on every kept token (and with the masked layout).
    """

    def __init__(self, config: ATSConfig, batch: int, frames: int, slots: int, device, prune: bool,
                 divided: bool = False):
        self.config, self.prune, self.divided = config, prune, divided
        self._blocks = set(config.blocks)
        self.batch, self.frames, self.slots0 = batch, frames, slots
        # slot -> location (contiguous, as after the first stage's gather: one graph for every stage)
        self.location = torch.arange(slots, device=device).expand(batch, frames, slots).contiguous()
        self.ragged = prune and config.variant in RAGGED
        self.static = prune and config.mode == "static"
        self.aligned_width = slots  # locations of the aligned grid after the last stage (the static bound)
        self.most_kept = frames * slots  # the most patch tokens a sample can hold after the last stage (static)
        self.after_attention = config.selection in AFTER_ATTENTION  # the block reduces after attention (`reduce`)
        # ToMe: present tokens of a row (a frame's, or the clip's locations in `tube`), the same in every row and
        # known on the host; and the tokens' sizes (B, T, W) once a merge has made them differ (None before)
        self.count = int(slots)  # a traced shape (torch.jit.trace, fvcore) is a tensor: `-=` would change `slots0`
        self.sizes: Optional[Tensor] = None
        # (count, sizes) entering each ToMe block: activation checkpointing runs a block again in backward, long
        # after later blocks moved the state on, and the re-run must start where the first run did
        self._entering: Dict[int, Tuple[int, Optional[Tensor]]] = {}
        self._records: Dict[int, StageRecord] = {}  # by block: a re-run (activation checkpointing) overwrites

    @classmethod
    def start(cls, model, batch: int, frames: int, slots: int, device, divided: bool = False
              ) -> Optional["SamplingRun"]:
        """The run for one forward pass of `model` over a (batch, frames, slots) grid; None when dense.
        Training masks (differentiable); inference prunes when the config says drop_tokens. `divided`: the
        blocks are TimeSformer's divided ones, with temporal attention and token-wise layers on the grid
        without its CLS, so the layouts carry the temporal mask and `token_rows` (other backbones skip them)."""
        config = getattr(model, "ats", None)
        if config is None:
            return None
        return cls(config, batch, frames, slots, device, prune=config.drop_tokens and not model.training,
                   divided=divided)

    def stage(self, block: int) -> Optional["SamplingRun"]:
        """Itself where `block` samples, None where it does not (what a block is handed)."""
        return self if block in self._blocks else None

    @property
    def records(self) -> List[StageRecord]:
        return [self._records[b] for b in sorted(self._records)]

    def sample(self, block: int, q_cls: Tensor, k: Tensor, v: Tensor, scale: float,
               key_valid: Optional[Tensor], valid: Optional[Tensor]) -> Tensor:
        """Score the tokens of a (B, T, L) grid by the CLS row of attention (q_cls (B*T, H, 1, d), k and v
        (B*T, H, 1 + L, d), key_valid (B*T, 1 + L) as `cls_significance` takes them) and sample. Returns keep
        (B, T, L) bool. The sample is discrete, so no gradient flows through it: it runs without autograd,
        and with `sampler="compiled"` as one compiled function (a few fused kernels instead of about a
        hundred small ops)."""
        cfg, l = self.config, k.shape[2] - 1
        grid = (self.batch, self.frames, l)
        fn = maybe_compiled(score_and_select, cfg.sampler, float_args=True)
        with torch.no_grad():
            keys = None if cfg.selection != "random" else \
                random_keys(cfg.seed, block, self.location, self.slots0, frames_share=cfg.variant == "tube")
            return fn(q_cls, k, v, key_valid, valid, grid, scale, cfg.variant, cfg.budget(block), self.slots0,
                      cfg.min_tokens, cfg.selection, keys)

    def layout(self, block: int, keep: Tensor) -> Tuple[Optional[SlotGather], Layout]:
        """Where kept tokens go next: (the gathers that make the new grid, or None to keep the grid; the new
        layout)."""
        b, t = self.batch, self.frames
        plan, place = maybe_compiled(plan_layout, self.config.sampler), maybe_compiled(arrange, self.config.sampler)
        with torch.no_grad():
            mask, order, aligned_order, reads = plan(keep, self.location, self.slots0, self.prune, self.ragged,
                                                     not self.static)
        if not self.prune:  # masked: every slot stays, dropped tokens become absent
            self._records[block] = StageRecord(block, mask, keep.shape[2], keep.shape[2])
            keys, key_mask = key_masks(keep)
            return None, Layout(keep, frame_keys=keys, frame_mask=key_mask,
                                temporal_mask=temporal_mask(keep) if self.divided and t > 1 else None,
                                token_rows=present_rows(keep) if self.divided else None,
                                key_rows=present_rows(keys))
        if self.static:
            width, self.most_kept = self._static_widths(block, keep.shape[2])
            aligned = min(self.aligned_width, t * width, self.most_kept) if self.ragged else width
            every_kept = False
            present = b * self.most_kept
        else:  # trim: the batch's largest counts and the tokens kept, in one device read
            width, fewest, present, *union = reads.tolist()
            every_kept = fewest == width  # every row fills its slots: no mask needed
            aligned = union[0] if self.ragged else width
        self.aligned_width = aligned
        by_location = self.ragged and t > 1  # temporal mixing needs the location-aligned view
        every_slot = present > GATHER_BELOW * b * t * width
        with torch.no_grad():
            new = place(keep, self.location, mask, order, aligned_order if by_location else None, width, aligned,
                        self.ragged, not every_kept, None if every_slot else present, self.static, self.divided)
        self.location = new.location
        layout = Layout(None if every_kept else new.keep, new.column, new.source, new.aligned_valid,
                        new.frame_keys, new.frame_mask, new.temporal_mask, new.token_rows, new.key_rows)
        rows = t * width if every_slot else (self.most_kept if self.static else None)
        self._records[block] = StageRecord(block, mask, width, aligned if by_location else width, rows)
        return SlotGather(new.index, new.slots, new.rows), layout

    def _static_widths(self, block: int, slots: int) -> Tuple[int, int]:
        """(slots per frame, patch tokens per sample) after this stage in the static layout: the most any
        sample can keep. A `joint` sample draws over all its present tokens, at most `most_kept`. EViT keeps
        a fused token more in every frame; ToMe's count is exact (`count`)."""
        cfg, t = self.config, self.frames
        if cfg.selection == "tome":
            return self.count, t * self.count
        fused = cfg.selection == "evit"
        if cfg.variant == "joint":
            most = min(self.most_kept, max_kept(cfg.budget(block), self.most_kept, cfg.min_tokens) + t * fused)
            return min(slots, most), most
        width = min(slots, max_kept(cfg.budget(block), slots, cfg.min_tokens) + fused)
        return width, t * width

    def reduce(self, block: int, q_cls: Tensor, k: Tensor, scale: float, layout: Layout
               ) -> Tuple["Reduction", Layout]:
        """EViT or ToMe at `block` (`reducers.py`), once its attention has run over every token: the plan is
        made from the CLS row of attention (EViT) or the keys averaged over heads (ToMe; X-ViT's shifted ones),
        q_cls (B*T, H, 1, d), k (B*T, H, 1 + L, d). Returns what to do to the tokens after the attention residual
        and the new layout (carrying ToMe's sizes as attention biases)."""
        cfg = self.config
        b, t, l = self.batch, self.frames, k.shape[2] - 1
        if cfg.selection == "evit":
            attn = cls_attention(q_cls, k, scale, layout.frame_keys).reshape(b, t, l)
            plan = evit_plan(attn, layout.valid, cfg.variant, cfg.budget(block), self.slots0, cfg.min_tokens)
        else:
            if block in self._entering:  # a re-run (activation checkpointing): start from the first run's state
                self.count, self.sizes = self._entering[block]
            self._entering[block] = (self.count, self.sizes)
            r = tome_merge_count(self.count, cfg.budget(block), cfg.min_tokens)
            with torch.no_grad():
                metric = k[:, :, 1:].mean(dim=1).float().reshape(b, t, l, -1)
                sizes = self.sizes if self.sizes is not None else metric.new_ones(b, t, l)
                plan = tome_plan(metric, layout.valid, sizes, cfg.variant, self.count, r)
            self.count -= r
        gather, layout = self.layout(block, plan.keep)
        if plan.sizes is not None and (self.sizes is not None or self.count < l):
            self.sizes = gather_slots(plan.sizes[..., None], gather)[..., 0]
            layout = size_biased(layout, self.sizes, temporal=self.divided and t > 1)
        return Reduction(plan, gather), layout


def kept_tokens(model) -> Dict[int, Tensor]:
    """Per-sample kept patch tokens (all frames together) at every ATS stage of the last forward pass.

    Returns {block index: LongTensor (B,)}; empty for a dense model. This is what the GFLOPs accounting
    and the histograms use.
    """
    return {r.block: r.kept for r in getattr(model, "ats_trace", [])}


def token_masks(model) -> Dict[int, Tensor]:
    """Per-stage masks (B, T, L0) over the original patch locations: True where a token was kept."""
    return {r.block: r.mask for r in getattr(model, "ats_trace", [])}
