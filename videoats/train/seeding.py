"""Seeds and data order for `train`: what makes a run reproducible and resumable.

Every random draw of a run depends only on (SEED, epoch, position), never on how the run got there:
- the data order of an epoch is DistributedSampler's permutation seeded with SEED + epoch;
- a training item's clip position and augmentations are drawn from a generator seeded by (SEED, epoch,
  video index), inside whatever process loads it (main process or any DataLoader worker);
- the model's own draws (drop path, dropout) are re-seeded from (SEED, epoch, step, rank) before every
  optimizer step.
So a run resumed from a checkpoint written after step k of an epoch replays exactly the draws an
uninterrupted run makes, with or without workers, and no RNG state has to be carried across (it is still
saved in checkpoints, per rank, for inspection and for code outside this engine).

The process group itself (rank, device, collectives) is `videoats.runtime`.
"""
from __future__ import annotations

import random
from typing import Iterator, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from ..runtime import seed_everything


# ---------------------------------------------------------------------------------------------- seeds


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (SeedSequence hashing: nearby inputs give unrelated seeds)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def rng_state() -> dict:
    """This process's RNG states in plain types (loadable with `torch.load(weights_only=True)`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------------------------- data order


class ResumableSampler(DistributedSampler):
    """DistributedSampler (permutation seeded with seed + epoch) that yields `(epoch, index)` pairs and can
    start part-way through an epoch.

    The epoch travels with every index so that the item seed is right in DataLoader workers too: persistent
    workers hold their own copy of the dataset, which `set_epoch` on the main process would not reach.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = int(start)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        indices = list(super().__iter__())
        return iter([(self.epoch, i) for i in indices[self.start:]])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class SeededItems(Dataset):
    """Wraps the training dataset: item (epoch, index) is drawn with RNGs seeded from (seed, epoch, index).

    The dataset's sampling uses the global `random` module and torch's global generator (torchvision
    transforms); they are seeded for the item and restored afterwards, so that loading in the main
    process does not disturb the model's random stream.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)
        self.label_names = getattr(dataset, "label_names", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = derive_seed(self.seed, 1, epoch, index)
        py, npy = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                seed_everything(seed)
                return self.dataset[index]
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def seed_step(seed: int, epoch: int, step: int, rank: int) -> None:
    """Re-seed the model's random stream before an optimizer step (see the module docstring)."""
    s = derive_seed(seed, 2, epoch, step, rank)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % (2 ** 32))


def worker_threads(_worker_id: int) -> None:
    """DataLoader worker init: one intra-op thread per worker (decoding parallelises over workers)."""
    torch.set_num_threads(1)
