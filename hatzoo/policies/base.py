"""What an architecture policy returns: the mask groups and the per-task parts of a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from hatzoo.core.groups import UnitSlice
from hatzoo.core.spec import PolicySpec

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)


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
