"""Room left for new tasks: per-group capacity, the warning on a full group and a readable summary."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free at run time: `hatzoo.CapacityWarning` imports no torch
    import torch

    from hatzoo.core.groups import MaskGroup


class CapacityWarning(UserWarning):
    """A mask group has no free unit left: new tasks can only reuse units whose weights are locked."""


def full_group_message(groups: list[str]) -> str:
    """What a full group means for the next task, and what to do about it."""
    names = ", ".join(groups[:4]) + (f" and {len(groups) - 4} more" if len(groups) > 4 else "")
    return (
        f"mask group(s) {names} have no free units left: a new task can only reuse units earlier tasks "
        "trained (their weights are locked), so it learns less well there. To make room, forget tasks you "
        "no longer need (model.forget(t)); for longer sequences, create the model with a lower task_budget "
        "(hatzoo.HATConfig) or wider layers. model.capacity_summary() shows the room left per group."
    )


def warn_if_full(capacity: dict[str, dict[str, Any]], warned: set[str], stacklevel: int) -> None:
    """Warn once per group when a new task finds it with no free unit; ``warned`` holds those named already.

    ``stacklevel`` is the caller's: 2 points the warning at the code that called the caller.
    """
    full = [name for name, info in capacity.items() if info["free"] == 0]
    if new := [name for name in full if name not in warned]:
        warned.update(new)
        warnings.warn(full_group_message(new), CapacityWarning, stacklevel=stacklevel + 1)


def summarize(capacity: dict[str, dict[str, Any]]) -> str:
    """One line per group (used / size, free) and a total, from ``HATModel.capacity()``."""
    width = max((len(name) for name in capacity), default=0)
    lines = []
    for name, group in capacity.items():
        size, free = group["size"], group["free"]
        full = "  FULL" if free == 0 else ""
        lines.append(f"{name:<{width}}  {size - free:>6} / {size:<6} used  {free:>6} free{full}")
    size = sum(g["size"] for g in capacity.values())
    free = sum(g["free"] for g in capacity.values())
    tasks = len({t for g in capacity.values() for t in g["used"]})
    full_groups = sum(1 for g in capacity.values() if g["free"] == 0)
    lines.append(
        f"{free} of {size} units free ({free / max(size, 1):.1%}) after {tasks} ended task(s); "
        f"{full_groups} of {len(capacity)} groups full"
    )
    return "\n".join(lines)


def capacity_report(
    groups: list[MaskGroup], masks: dict[str, torch.Tensor], ended: list[int], used: dict[str, torch.Tensor]
) -> dict[str, dict[str, Any]]:
    """Per mask group: its size, the units each ended task uses, and how many are still free."""
    return {
        g.name: {
            "size": g.size,
            "used": {t: int(masks[g.name][t].sum()) for t in ended},
            "free": g.size - int(used[g.name].sum()),
        }
        for g in groups
    }
