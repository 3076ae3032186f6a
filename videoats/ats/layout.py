"""What the blocks see of a token grid between ATS stages: the present tokens and their masks (`Layout`), the
gathers a pruning stage hands them (`SlotGather`), and when token-wise layers gather rows instead of computing
padding (`GATHER_BELOW`). `core.py` makes them; the models and the reducers read them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

from torch import Tensor

from .stage import Rows

# Token-wise layers gather the present tokens of a pruned layout when at most this share of its slots hold one
# (in `static`: may hold one); above it (the usual case: `tube`, `frame`) computing the padding costs less than
# moving the tokens about.
GATHER_BELOW = 0.9


@dataclass(frozen=True)
class Layout:
    """What a token grid (B, T, W, ...) holds between blocks: `valid` (B, T, W) marks present tokens (None:
    all are). In the ragged layout, `column` (B, T, W, 1) gives each slot's column in the location-aligned
    grid (B, T, U) (U for a padding slot), `source` the same clamped to U - 1 (where a padding slot reads
    from), and `aligned_valid` (B, T, U) what is present there.

    Token-wise layers compute every slot (`token_rows` None: no token is absent, or a pruned layout whose
    slots are nearly all present, or may be) or gather the present tokens (`token_rows`, and `key_rows` for
    the frame rows with their CLS, those `frame_keys` marks; `stage.present_rows`): in a trim layout exactly
    those, whose number the host read with the widths; in a static one padded to the most a sample can keep;
    in the masked layout of training found on the device."""
    valid: Optional[Tensor] = None
    column: Optional[Tensor] = None
    source: Optional[Tensor] = None
    aligned_valid: Optional[Tensor] = None
    # of `valid` (`key_masks`, made once with the layout): frame attention's present keys, each frame's CLS
    # first (B*T, 1 + W), and its attention mask (B*T, 1, 1, 1 + W); None when every token is present
    frame_keys: Optional[Tensor] = None
    frame_mask: Optional[Tensor] = None
    # the attention mask over each location's frames on the grid `aligned(x)` gives (`temporal_mask`), None when
    # every token there is present
    temporal_mask: Optional[Tensor] = None
    token_rows: Optional[Rows] = None
    key_rows: Optional[Rows] = None

    def aligned(self, x: Tensor) -> Tensor:
        """(B, T, W, C) slots -> (B, T, U, C) where a column is one location in every frame (absent: 0)."""
        if self.column is None:
            return x
        b, t, u = self.aligned_valid.shape
        out = x.new_zeros(b, t, u + 1, x.shape[3])  # column U collects the padding slots, then goes
        return out.scatter_(2, self.column.expand(-1, -1, -1, x.shape[3]), x)[:, :, :u]

    def unaligned(self, y: Tensor) -> Tensor:
        """The inverse of `aligned`: (B, T, U, C) -> (B, T, W, C); padding slots get some present value."""
        if self.column is None:
            return y
        return y.gather(2, self.source.expand(-1, -1, -1, y.shape[3]))


class SlotGather(NamedTuple):
    """Where every slot of the grid after a pruning stage comes from, with the index views the blocks'
    gathers take, made once per stage (by the compiled layout, with `sampler="compiled"`): each block's
    gather is then one op and a view."""
    index: Tensor  # (B, W) the same slots in every frame (aligned), or (B, T, W) per frame (ragged)
    slots: Tensor  # (B, T, W, 1): the old slot of every new slot, per frame
    rows: Tensor  # (B*T, 1 + W, 1): the same over a frame's rows, its CLS row first

    def grid(self, x: Tensor) -> Tensor:
        """(B, T, L, D) grid -> (B, T, W, D)."""
        return x.gather(2, self.slots.expand(-1, -1, -1, x.shape[-1]))

    def frame_rows(self, x: Tensor) -> Tensor:
        """Frame rows with the CLS first, (B*T, 1 + L, D) -> (B*T, 1 + W, D), or per head (B*T, H, 1 + L, d)
        -> (B*T, H, 1 + W, d)."""
        if x.dim() == 4:
            return x.gather(2, self.rows[:, None].expand(-1, x.shape[1], -1, x.shape[-1]))
        return x.gather(1, self.rows.expand(-1, -1, x.shape[-1]))



def gather_slots(x: Tensor, gather: Optional[SlotGather]) -> Tensor:
    """Select the slots of a grid tensor (B, T, L, D) a pruning stage kept (none: x as it is)."""
    return x if gather is None else gather.grid(x)
