"""Distributed data parallel helpers: one process group, sharded in-memory batches, exact loss scaling.

``train_sequence`` runs unchanged under ``torchrun --nproc_per_node N``: the recipe's ``batch_size``
is the *global* batch; every global batch is drawn from one seeded permutation shared by all ranks and
rank r takes rows ``r::N`` of it. Each rank's loss is ``sum of its per-example losses * N / global
batch size``, so DDP's gradient averaging gives exactly the gradient of the mean over the global batch,
also for an uneven last batch. Single-process training is the case N = 1 and gives the same numbers up
to float summation order (BatchNorm statistics are per rank, as in any DDP run without SyncBatchNorm).

HAT under DDP: the model is wrapped per task (a task adds parameters) with
``find_unused_parameters=True`` because other tasks' heads, gates and norms take no part in the
forward pass. Locks stay exact: the core's tensor hooks zero locked gradient entries before DDP's
all-reduce reads them (tensor hooks run before the gradient is accumulated), and the global optimizer
step hook restores locked entries after every step on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, world size, and whether a process group is active."""

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum numbers over ranks (float64 on CPU; gloo and nccl both take it)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


def init_distributed(backend: str = "gloo") -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); single process otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return DistContext()
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size())


def global_batches(
    n: int, batch_size: int, generator: torch.Generator, world_size: int
) -> list[torch.Tensor]:
    """Shuffled global batches of indices; a last batch smaller than max(2, world size) is dropped."""
    perm = torch.randperm(n, generator=generator)
    batches = list(perm.split(batch_size))
    if batches and len(batches[-1]) < max(2, world_size):
        batches.pop()
    return batches


def shard(indices: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's rows of a global batch (``rank::world_size``)."""
    return indices[ctx.rank :: ctx.world_size] if ctx.active else indices


def wrap(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """The module to call for training: DistributedDataParallel when a process group is active."""
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
