"""Host-side costs of running a model, measured the same way on any device: aten ops dispatched and
device-to-host reads.

On a GPU every aten op is (at least) one kernel launch and every host read stalls Python until the GPU
has caught up, so these two counts are what decides whether a saving in FLOPs becomes a saving in time.
Both are properties of the code, not of the machine: counted on the CPU they are the counts a GPU sees,
which is how `tools/bench_ats.py` and the tests measure them without a GPU.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops whose result the host must wait for: a scalar read (`item`, `int`, `bool`, `torch.equal`) or an output
# shape that depends on the data. A scalar read surfaces as `_local_scalar_dense`, or under inference mode as
# `item` / `is_nonzero` (the mode sees the outer op only, so a read is never counted twice)
HOST_READ_OPS = frozenset({"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select",
                           "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave"})
# reads that do not dispatch an op on the CPU (a CPU tensor's memory is simply read): counted by a hook
_UNDISPATCHED_READS = ("tolist", "numpy")


@dataclass
class OpCount:
    ops: int = 0  # aten ops dispatched (views included: each is a call the host pays for)
    host_reads: int = 0  # device-to-host reads
    by_op: Counter = field(default_factory=Counter)


class _Counter(TorchDispatchMode):
    def __init__(self, count: OpCount):
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.count.ops += 1
        self.count.by_op[name] += 1
        if name in HOST_READ_OPS and not (name == "repeat_interleave" and kwargs and "output_size" in kwargs):
            self.count.host_reads += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def count_ops() -> Iterator[OpCount]:
    """Count the aten ops and host reads of the code run inside: `with count_ops() as c: model(x)`."""
    count = OpCount()
    saved = {name: getattr(torch.Tensor, name) for name in _UNDISPATCHED_READS}

    def reading(original):
        def read(self, *args, **kwargs):
            count.host_reads += 1
            return original(self, *args, **kwargs)
        return read

    try:
        for name, original in saved.items():
            setattr(torch.Tensor, name, reading(original))
        with _Counter(count):
            yield count
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def profile_ops(fn: Callable[[], object]) -> OpCount:
    """The op count of `count_ops` read from the PyTorch profiler, so that it also sees inside a
    `torch.compile`d function (whose kernels a dispatch mode cannot watch): top-level aten ops (an op called by
    another aten op is part of it; for eager code the two counts agree), and on a GPU the CUDA kernels launched
    (`by_op["cuda_kernels"]`). Host reads are left to `count_ops`: on the CPU a `.tolist()` dispatches no op
    for the profiler to see. Run `fn` once before (compiled, warmed up)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    count = OpCount()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            count.by_op["cuda_kernels"] += 1
            continue
        parent = event.cpu_parent
        if not event.name.startswith("aten::") or (parent is not None and parent.name.startswith("aten::")):
            continue
        name = event.name[len("aten::"):]
        count.ops += 1
        count.by_op[name] += 1
    return count
