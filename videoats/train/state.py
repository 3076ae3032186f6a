"""Where a training run stands, as one record that a checkpoint saves and a resumed run reads back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from ..errors import VideoATSError

STATE_VERSION = 1


@dataclass
class Sums:
    """Running sums over training batches: loss x samples, correct predictions, samples."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0

    def add(self, loss: float, correct: float, count: float) -> None:
        self.loss += loss * count
        self.correct += correct
        self.count += count


@dataclass
class TrainState:
    """The position of a run (next epoch and step in it), the best validation so far, the running sums of the
    current epoch and log window, and the process/batch layout that wrote it."""

    world: int
    batch: int
    accum: int
    seed: int
    epoch: int = 0
    step_in_epoch: int = 0
    best: Dict[str, Optional[float]] = field(default_factory=lambda: {"top1": None, "epoch": None})
    epoch_sums: Sums = field(default_factory=Sums)
    window: Sums = field(default_factory=Sums)  # loss and count since the last log line

    def to_dict(self, steps_per_epoch: int, optimizer, schedule, scaler, rngs: List[dict]) -> dict:
        """The `train_state` entry of `last.pt` (plain types, loadable with weights_only)."""
        e = self.epoch_sums
        return {"version": STATE_VERSION, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.epoch * steps_per_epoch + self.step_in_epoch,
                "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": rngs, "best": dict(self.best),
                "epoch_sums": [e.loss, e.correct, e.count], "window_sums": [self.window.loss, self.window.count],
                "world_size": self.world, "batch_size": self.batch, "accum": self.accum, "seed": self.seed}

    @classmethod
    def from_dict(cls, ts: dict, optimizer=None, schedule=None, scaler=None) -> "TrainState":
        """The state a `to_dict` wrote; the optimizer, schedule and scaler given are loaded from it."""
        if optimizer is not None:
            optimizer.load_state_dict(ts["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(ts["scheduler"])
        if scaler is not None and ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        loss, correct, count = (float(x) for x in ts["epoch_sums"])
        w_loss, w_count = (float(x) for x in ts["window_sums"])
        return cls(world=int(ts["world_size"]), batch=int(ts["batch_size"]), accum=int(ts["accum"]),
                   seed=int(ts.get("seed", 0)), epoch=int(ts["epoch"]), step_in_epoch=int(ts["step_in_epoch"]),
                   best=dict(ts["best"]), epoch_sums=Sums(loss, correct, count), window=Sums(w_loss, 0.0, w_count))

    def check_layout(self, world: int, batch: int, accum: int, where: str, say: Callable[[str], None]) -> None:
        """Refuse a mid-epoch resume with another process/batch layout (the data order would differ)."""
        if (self.world, self.batch, self.accum) == (world, batch, accum):
            return
        if self.step_in_epoch:
            raise VideoATSError(f"{where} was written in the middle of an epoch by {self.world} process(es) x "
                                f"batch {self.batch} x {self.accum} accumulation; resume with the same layout "
                                "(or from an end-of-epoch checkpoint)")
        say("warning: resuming with another process/batch layout: the data order differs from the original run "
            "from here on")
        self.world, self.batch, self.accum = world, batch, accum


def read_state(path: str) -> dict:
    """A `last.pt` written by `videoats train`, or one line saying why it cannot continue a run."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file cannot continue a run
        raise VideoATSError(f"cannot resume from {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    if not isinstance(obj, dict) or "train_state" not in obj or "state_dict" not in obj:
        raise VideoATSError(f"cannot resume from {path}: it holds no training state (was it written by "
                            "`videoats train`?); start a new OUTPUT_DIR or pass it as TRAIN.CHECKPOINT_FILE")
    return obj
