"""The HAT mask regularizer's per-unit weights: what opening each unit costs a task."""

from __future__ import annotations

import torch

from hatzoo.core.config import HATConfig


def regularizer_weights(config: HATConfig, used: list[torch.Tensor]) -> torch.Tensor:
    """Per-unit weights w (float64, flat in group order) such that sum(gate * w) is the regularizer's ratio.

    ``used``: per group, the units other ended tasks use; they weigh nothing. "global": free units /
    all free units; "per_layer": the mean over groups with free units of each group's free-unit ratio.
    """
    free = [(~u).cpu() for u in used]
    counts = [int(f.sum()) for f in free]
    if config.reg_mode == "per_layer":
        groups_with_free = sum(1 for c in counts if c)
        scales = [1.0 / (c * groups_with_free) if c else 0.0 for c in counts]
    else:
        scales = [1.0 / sum(counts) if sum(counts) else 0.0] * len(counts)
    return torch.cat([f.to(torch.float64) * w for f, w in zip(free, scales, strict=True)])
