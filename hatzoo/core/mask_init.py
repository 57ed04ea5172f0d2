"""How a new task's gate embeddings start (``HATConfig.mask_init``): which units its gates open first."""

from __future__ import annotations

import torch

from hatzoo.core.config import HATConfig
from hatzoo.core.groups import MaskGroup

BUDGET_WIDTH = 1024  # mask_init="budget": a narrower group gives a task the budget of one this wide


def initial_embedding(
    config: HATConfig, group: MaskGroup, used: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A new task's embedding of ``group``; ``used`` marks the units ended tasks use."""
    if config.mask_init == "normal":
        return torch.randn(group.size, device=device, dtype=dtype)
    if config.mask_init == "budget":
        return budget_embedding(config.task_budget, group, used.to(device), device, dtype)
    value = 1.0 if config.mask_init == "dense" else -1.0
    return torch.full((group.size,), value, device=device, dtype=dtype)


def budget_embedding(
    share: float, group: MaskGroup, used: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """N(0, 1) on the units ended tasks use (about half reused); on free units +1 for about
    ``share`` * size of them, -1 elsewhere.

    A group narrower than BUDGET_WIDTH gives what one of that width would (share * BUDGET_WIDTH
    units), at most half of what is free: a 64-unit layer starts its first tasks as the paper's
    start does, rather than with 2 units that learn nothing, and a smaller task_budget still makes
    every group last longer. Each free unit opens with probability budget / free, so a group
    smaller than 1 / share (a block's few attention heads) still hands out a unit every few tasks
    rather than none. Reusing only some used units keeps units exclusive to each task, which
    ``forget`` can free.
    """
    free = group.size - int(used.sum())
    budget = max(share * group.size, min(share * BUDGET_WIDTH, free / 2))
    chance = min(1.0, budget / free) if free else 0.0
    start = torch.randn(group.size, device=device)  # the paper's magnitudes, so masks learn as fast
    drawn = torch.rand(group.size, device=device) < chance
    return torch.where(used, start, torch.where(drawn, start.abs(), -start.abs())).to(dtype)
