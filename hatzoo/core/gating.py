"""Where gates act: the forward hooks that multiply activations, and the flat layout of all groups' gates."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from hatzoo.core.gates import apply_gate
from hatzoo.core.groups import MaskGroup
from hatzoo.core.task_modules import TaskContext


class GateHook:
    """Multiplies a module's output (or input) by the current gate of one group.

    An object rather than a closure, so that ``copy.deepcopy`` of the model copies it along with
    the context it reads.
    """

    def __init__(self, context: TaskContext, group: str, dim: int) -> None:
        self.context, self.group, self.dim = context, group, dim

    def on_output(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        return apply_gate(output, self.context.gates[self.group], self.dim)

    def on_input(self, module: nn.Module, args):
        return (apply_gate(args[0], self.context.gates[self.group], self.dim), *args[1:])


def install_gate_hooks(
    backbone: nn.Module, context: TaskContext, groups: list[MaskGroup]
) -> list[RemovableHandle]:
    """Hook each group's gate onto its module; the handles let exactly these hooks be removed later."""
    handles = []
    for g in groups:
        module = backbone.get_submodule(g.gate.module)
        hook = GateHook(context, g.name, g.gate.dim)
        if g.gate.where == "output":
            handles.append(module.register_forward_hook(hook.on_output))
        else:
            handles.append(module.register_forward_pre_hook(hook.on_input))
    return handles


class GateLayout:
    """All groups' gates live in one flat vector: units in group order, then expanded to activations.

    Computing every gate of a forward pass together costs a handful of kernels instead of a few
    per group, and the expansion (a head's unit covers head_dim activations) is one gather.
    """

    def __init__(self, groups: list[MaskGroup]) -> None:
        self.names = [g.name for g in groups]
        self.act_sizes = [g.size * g.gate.expand for g in groups]
        expand = torch.tensor([g.gate.expand for g in groups], dtype=torch.long)
        per_unit = expand.repeat_interleave(torch.tensor([g.size for g in groups], dtype=torch.long))
        index = torch.arange(len(per_unit)).repeat_interleave(per_unit)  # flat unit of each activation
        # the gather index, or None when no group expands; the model keeps it as a buffer (device moves)
        self.index = index if any(g.gate.expand > 1 for g in groups) else None

    def split(self, units: torch.Tensor, index: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """A flat per-unit vector -> per-group gates at activation width (views of one tensor)."""
        flat = units if index is None else units.index_select(0, index)
        return dict(zip(self.names, flat.split(self.act_sizes), strict=True))
