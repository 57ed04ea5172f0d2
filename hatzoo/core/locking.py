"""Which entries of the shared tensors are locked: those whose units ended tasks all use.

``LockGuard`` (locks.py) keeps locked entries at their stored values; this module decides, from the
mask groups and the union of ended tasks' masks, which entries those are.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from hatzoo.core.gates import apply_gate
from hatzoo.core.groups import MaskGroup, UnitSlice

SliceIndex = dict[str, list[tuple[str, UnitSlice]]]


def index_slices(groups: list[MaskGroup]) -> SliceIndex:
    """Map each backbone tensor ('module.tensor') to the (group, slice) pairs that touch it."""
    index: SliceIndex = {}
    for g in groups:
        for _, s in g.slices():
            index.setdefault(f"{s.module}.{s.tensor}", []).append((g.name, s))
    return index


def ended_task_locks(
    backbone: nn.Module,
    per_task: list[list[nn.Parameter]],
    ended: list[int],
    slices: SliceIndex,
    used: dict[str, torch.Tensor],
) -> list[tuple[nn.Parameter, torch.Tensor | None]]:
    """Every lock the ended tasks need: the entries of shared tensors their units use, and their own
    tensors (``per_task[t]``: head, embeddings, norms, tokens of task t) whole."""
    if not ended:
        return []
    per_task_ids = {id(p) for params in per_task for p in params}
    shared = [(n, p) for n, p in backbone.named_parameters() if id(p) not in per_task_ids]
    return shared_locks(shared, slices, used) + [(p, None) for t in ended for p in per_task[t]]


def shared_locks(
    named_params: Iterable[tuple[str, nn.Parameter]], slices: SliceIndex, used: dict[str, torch.Tensor]
) -> list[tuple[nn.Parameter, torch.Tensor | None]]:
    """(parameter, locked entries or None for all) of each shared tensor with any entry locked."""
    locks = []
    for name, param in named_params:
        lock = lock_mask(param, slices.get(name, []), used)
        if lock is not False:
            locks.append((param, lock))
    return locks


def lock_mask(
    param: nn.Parameter, slices: list[tuple[str, UnitSlice]], used: dict[str, torch.Tensor]
) -> torch.Tensor | None | bool:
    """Locked entries of one shared tensor: None when all are, False when none, else a bool mask.

    An entry is locked when every unit it touches (along each sliced dim) is used; dims that no
    group slices count as used. Built from per-dim vectors, so fully locked tensors cost nothing.
    """
    per_dim: dict[int, torch.Tensor] = {}
    for group, s in slices:
        entries = s.entry_mask(used[group]).to(param.device)
        per_dim[s.dim] = per_dim[s.dim] & entries if s.dim in per_dim else entries
    if all(bool(v.all()) for v in per_dim.values()):
        return None
    if any(not bool(v.any()) for v in per_dim.values()):
        return False
    locked = torch.ones_like(param, dtype=torch.bool)
    for dim, entries in per_dim.items():
        locked = apply_gate(locked, entries, dim)  # bool * bool is a logical and
    return locked
