"""Count the tensor operations a piece of code runs, and those that would stall a GPU.

A host-device synchronization (``.item()``, ``bool(tensor)``, ``nonzero``, a shape that depends on
data) or a host-to-device copy (a tensor built from Python data) in a training step stalls a GPU's
queue. They show on any device as ATen operators, so a CPU run counts them too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# operators that read device memory on the host, or whose output shape depends on tensor values
SYNC_OPS = frozenset(
    {
        "aten::_local_scalar_dense",
        "aten::nonzero",
        "aten::nonzero_static",
        "aten::masked_select",
        "aten::repeat_interleave.Tensor",
        "aten::unique_consecutive",
        "aten::_unique2",
        "aten::unique_dim",
    }
)
# operators that copy Python data into a new tensor (a host-to-device copy on a GPU)
HOST_COPY_OPS = frozenset({"aten::lift_fresh", "aten::lift_fresh_copy"})


class _OpCounter(TorchDispatchMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name == "aten::index.Tensor" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        ):
            name = "aten::nonzero"  # boolean indexing is a nonzero underneath
        self.counts[name] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def count_ops() -> Iterator[Counter]:
    """Count every ATen operator run inside the block (forward, backward and optimizer alike)."""
    counts: Counter = Counter()
    with _OpCounter(counts):
        yield counts


def syncs(counts: Counter) -> int:
    """How many of the counted operators would synchronize with the host or copy from it on a GPU."""
    return sum(n for op, n in counts.items() if op in SYNC_OPS or op in HOST_COPY_OPS)
