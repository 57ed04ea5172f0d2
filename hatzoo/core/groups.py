"""Mask groups: the one declaration that drives gating, locks, regularization, capacity and pruning.

A mask group is a set of units sharing one gate per task. It names the tensors whose rows or
columns belong to those units (``UnitSlice``) and where the gate multiplies the activations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn


def group_key(name: str) -> str:
    """A dotted name (mask group, per-task tensor) as a module key: module keys cannot contain dots."""
    return name.replace(".", "-")


@dataclass(frozen=True)
class UnitSlice:
    """Where a group's units live in one tensor of one module.

    Along ``dim`` the tensor holds ``repeat`` consecutive sections of ``units * expand`` entries;
    unit ``u`` owns entries ``[u * expand, (u + 1) * expand)`` of every section (q, k, v rows of a
    head are three sections of ``head_dim`` rows each).
    """

    module: str
    tensor: str
    dim: int
    expand: int = 1
    repeat: int = 1

    def unit_index(self, units: int) -> torch.Tensor:
        """Index of the unit owning each entry along ``dim``."""
        per_section = torch.arange(units).repeat_interleave(self.expand)
        return per_section.repeat(self.repeat)

    def entry_mask(self, unit_mask: torch.Tensor) -> torch.Tensor:
        """Expand a per-unit mask to a per-entry mask along ``dim``."""
        return unit_mask.repeat_interleave(self.expand).repeat(self.repeat)


@dataclass(frozen=True)
class GateSite:
    """Where the gate multiplies activations: a module's output or input, along ``dim``."""

    module: str
    where: Literal["output", "input"] = "output"
    dim: int = -1
    expand: int = 1


@dataclass
class MaskGroup:
    """One set of gated units with the tensors that write (producers) and read (consumers) them.

    ``producers`` also lists per-unit tensors between the writer and the gate (a BatchNorm's
    weight, bias and running statistics) so that pruning removes them too; per-task tensors are
    never locked, so listing them there is harmless for the locks.
    ``resize`` fixes architecture attributes after pruning (a ViT attention's ``num_heads``);
    ``collapse`` names the branch module and the bias that is its whole output when no unit is
    kept, so export can replace the branch by a constant.
    """

    name: str
    size: int
    gate: GateSite
    producers: list[UnitSlice] = field(default_factory=list)
    consumers: list[UnitSlice] = field(default_factory=list)
    resize: Callable[[nn.Module, int], None] | None = None
    collapse: tuple[str, str] | None = None

    def slices(self) -> list[tuple[str, UnitSlice]]:
        """All slices tagged with their role, producers first."""
        return [("out", s) for s in self.producers] + [("in", s) for s in self.consumers]
