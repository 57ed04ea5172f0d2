"""Per-task copies of what no mask group protects: norms, position embeddings, class tokens.

A ``TaskContext`` shared by the wrappers says which task the current forward pass runs; the
wrappers dispatch to that task's copy. Only the copies are registered, so a state dict holds
one entry per task and nothing twice.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from hatzoo.core.groups import group_key
from hatzoo.core.spec import PolicySpec


@dataclass
class TaskContext:
    """What the current forward pass runs: the task, the gate scale and the gates themselves."""

    task: int | None = None
    gates: dict[str, torch.Tensor] = field(default_factory=dict)

    @contextmanager
    def run(self, task: int, gates: dict[str, torch.Tensor]):
        previous = (self.task, self.gates)
        self.task, self.gates = task, gates
        try:
            yield
        finally:
            self.task, self.gates = previous

    def require_task(self) -> int:
        if self.task is None:
            raise RuntimeError(
                "a hatified module ran outside HATModel.forward; call the HAT model with task="
            )
        return self.task


class TaskModule(nn.Module):
    """Holds one copy of a module per task and runs the copy of the current task."""

    def __init__(self, template: nn.Module, context: TaskContext) -> None:
        super().__init__()
        self.template = [copy.deepcopy(template)]  # a list keeps it out of the state dict
        self.tasks = nn.ModuleList()
        self._context = [context]

    def add_task(self, source: int | None) -> None:
        """Append a copy of task ``source``'s module, or of the initial module when None."""
        origin = self.template[0] if source is None else self.tasks[source]
        self.tasks.append(copy.deepcopy(origin))

    def _apply(self, fn, recurse=True):
        # the template is outside the module tree; it must follow .to() / .double() like the copies
        self.template[0]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def forward(self, *args, **kwargs):
        return self.tasks[self._context[0].require_task()](*args, **kwargs)


class TaskParameter(nn.Module):
    """One copy per task of a tensor attribute of a host module (``pos_embed``, ``cls_token``)."""

    def __init__(self, host: nn.Module, name: str, context: TaskContext) -> None:
        super().__init__()
        initial = getattr(host, name)
        self.name = name
        self.template = [initial.detach().clone()]
        self.tasks = nn.ParameterList()
        self._context = [context]
        self._host = [host]
        del host._parameters[name]
        host.__dict__[name] = initial.detach()  # reads outside a task see the initial value
        self.hook = host.register_forward_pre_hook(self._select)

    def add_task(self, source: int | None) -> None:
        origin = self.template[0] if source is None else self.tasks[source]
        self.tasks.append(nn.Parameter(origin.detach().clone()))

    def _apply(self, fn, recurse=True):
        # the template and the host's plain attribute live outside the module tree: move them along
        self.template[0] = fn(self.template[0])
        host = self._host[0]
        if isinstance(host.__dict__.get(self.name), torch.Tensor):
            host.__dict__[self.name] = fn(host.__dict__[self.name].detach()).detach()
        return super()._apply(fn, recurse)

    def _select(self, module: nn.Module, args) -> None:
        module.__dict__[self.name] = self.tasks[self._context[0].require_task()]


def wrap_per_task_parts(backbone: nn.Module, spec: PolicySpec, context: TaskContext) -> nn.ModuleDict:
    """Give each per-task module of ``spec`` one copy per task, in place; returns the per-task tensors."""
    for name in spec.per_task_modules:
        backbone.set_submodule(name, TaskModule(backbone.get_submodule(name), context))
    task_params = nn.ModuleDict()
    for host_name, attr in spec.per_task_params:
        key = group_key(f"{host_name}.{attr}" if host_name else attr)
        task_params[key] = TaskParameter(backbone.get_submodule(host_name), attr, context)
    return task_params
