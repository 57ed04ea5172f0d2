"""What an architecture policy returns and the core builds on: the mask groups and per-task parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hatzoo.core.groups import MaskGroup


@dataclass
class PolicySpec:
    """A policy's answer for one model.

    groups: the mask groups.
    per_task_modules: qualified names of modules that get one copy per task (norms).
    num_features: width of the features the per-task heads read.
    input_shape: expected input shape without the batch, ``None`` entries where any size goes;
        ``None`` as a whole when a leading Flatten takes any shape of ``input_numel`` values.
    per_task_params: (host module name, attribute) of tensors that get one copy per task.
    fold_pairs: (conv, batchnorm) module names that ``specialize`` may fold exactly.
    arch: how to rebuild the backbone (source, name, kwargs); stored in checkpoints.
    feature_group: the group whose units are the features the heads read, if any; pruning
        that group also removes the matching head columns.
    """

    groups: list[MaskGroup]
    per_task_modules: list[str]
    num_features: int
    input_shape: tuple[int | None, ...] | None
    per_task_params: list[tuple[str, str]] = field(default_factory=list)
    fold_pairs: list[tuple[str, str]] = field(default_factory=list)
    arch: dict[str, Any] = field(default_factory=dict)
    input_numel: int | None = None
    feature_group: str | None = None
