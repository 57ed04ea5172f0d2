"""What an architecture policy returns: the mask groups and the per-task parts of a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from hatzoo.core.groups import MaskGroup, UnitSlice

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)


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


@dataclass(frozen=True)
class Policy:
    """A named rule: ``matches(model)`` says whether ``build(model)`` applies."""

    name: str
    matches: Callable[[nn.Module], bool]
    build: Callable[[nn.Module], PolicySpec]


def norm_modules(model: nn.Module) -> list[str]:
    """Names of every normalization layer: those become per-task."""
    return [name for name, module in model.named_modules() if name and isinstance(module, NORM_TYPES)]


def unit_rows(model: nn.Module, name: str, expand: int = 1, repeat: int = 1) -> list[UnitSlice]:
    """The dim-0 slices of every per-unit tensor module ``name`` has (weight, bias, running statistics):
    a writer's rows and those of a norm after it belong to the units they write."""
    module = model.get_submodule(name)
    tensors = ("weight", "bias", "running_mean", "running_var")
    return [UnitSlice(name, t, 0, expand, repeat) for t in tensors if getattr(module, t, None) is not None]
