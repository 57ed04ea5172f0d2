"""The HAT model: a backbone with per-task gates, heads, norms, and locks that make forgetting zero.

``HATModel`` is the facade users call; the work is done by its collaborators: the task ledger
(``tasks.TaskList``), the gate hooks and flat gate layout (``gating``), the first embeddings of a
task (``mask_init``), the regularizer's weights (``regularizer``), which entries are locked
(``locking``) and the guard that keeps them (``locks.LockGuard``), and capacity (``capacity``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hatzoo.core.capacity import capacity_report, summarize, warn_if_full
from hatzoo.core.config import HATConfig
from hatzoo.core.gates import soft_gate
from hatzoo.core.gating import GateLayout, install_gate_hooks
from hatzoo.core.groups import MaskGroup, group_key
from hatzoo.core.inputs import check_input, check_scale
from hatzoo.core.locking import ended_task_locks, index_slices
from hatzoo.core.locks import LockGuard
from hatzoo.core.mask_init import initial_embedding
from hatzoo.core.regularizer import regularizer_weights
from hatzoo.core.spec import PolicySpec
from hatzoo.core.task_modules import TaskContext, TaskModule, wrap_per_task_parts
from hatzoo.core.tasks import TaskInfo, TaskList, TaskStatus
from hatzoo.data_config import timm_pretrained_cfg
from hatzoo.errors import TaskError


class HATModel(nn.Module):
    """A backbone turned into a HAT network: ``model(x, task=t, scale=s)``.

    The core's part: task life cycle, forward, regularizer, locks. ``hatzoo.HATModel`` (built by
    ``hatzoo.hatify(model)`` or ``hatzoo.create_model(name)``) adds saving, loading, pushing and
    prediction from the layers that own them. Per task:
    ``add_task`` -> train with ``model(x, task=t, scale=s)`` and ``regularization(task=t)`` ->
    ``end_task``. Gradient locks and embedding compensation run inside ``backward`` and
    ``optimizer.step`` with no extra call.
    """

    def __init__(self, backbone: nn.Module, spec: PolicySpec, config: HATConfig | None = None) -> None:
        super().__init__()
        self.config = config or HATConfig()
        self.spec = spec
        self.groups: dict[str, MaskGroup] = {g.name: g for g in spec.groups}
        self.tasks = TaskList()
        self._context = TaskContext()
        self._last_scale: dict[int, float] = {}
        # how inputs are prepared (mean, std, input_shape, benchmark): stored in checkpoints, used by export
        self.data_config: dict[str, Any] = {}
        self.backbone = backbone
        self.heads = nn.ModuleList()
        self.embeddings = nn.ModuleDict({group_key(g.name): nn.ParameterList() for g in spec.groups})
        for g in spec.groups:
            self.register_buffer(self._mask_buffer(g.name), torch.zeros(0, g.size, dtype=torch.bool))
        self.task_params = wrap_per_task_parts(backbone, spec, self._context)
        self._gate_hooks = install_gate_hooks(backbone, self._context, spec.groups)
        self._slices = index_slices(spec.groups)
        self._layout = GateLayout(spec.groups)
        self.register_buffer("_gate_index", self._layout.index, persistent=False)
        self._binary_cache: dict[int, dict[str, torch.Tensor]] = {}
        self._reg_weights: dict[int, torch.Tensor] = {}
        self._warned_full: set[str] = set()
        self._guard = LockGuard()

    # ----------------------------------------------------------------- construction
    def hook_ids(self) -> set[int]:
        """The ids of the forward hooks this model put on its backbone (gates, per-task tensors).

        A copy of the backbone keeps them as its hooks' keys, so they can be removed there too.
        """
        return {h.id for h in self._gate_hooks} | {p.hook.id for p in self.task_params.values()}

    @staticmethod
    def _mask_buffer(group: str) -> str:
        return f"mask__{group_key(group)}"

    def masks(self, group: str) -> torch.Tensor:
        """Binary masks of one group: bool tensor [num_tasks, size]; rows of open tasks are zero."""
        return getattr(self, self._mask_buffer(group))

    # ----------------------------------------------------------------- task life cycle
    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def open_task(self) -> int | None:
        """The task being trained, if any."""
        return self.tasks.open_task()

    def add_task(self, num_classes: int, labels: list[str] | None = None) -> int:
        """Add a task with its own head, gates, norms and tokens; returns its id."""
        info = TaskInfo.new(num_classes, labels)
        current = self.open_task()
        if current is not None:
            raise TaskError(f"task {current} is still open; call end_task({current}) before adding a task")
        warn_if_full(self.capacity(), self._warned_full, stacklevel=2)
        task = self.restore_task(info)
        self.refresh_locks()
        return task

    def restore_task(self, info: TaskInfo) -> int:
        """Append a task in the state ``info`` describes, with fresh parameters and empty mask rows.

        For checkpoint loaders: no life-cycle checks and no lock refresh. Load the task's tensors
        (``task_tensors``, ``set_mask``), then call ``refresh_locks()`` once.
        """
        task = len(self.tasks)
        device, dtype = self._device_dtype()
        source = self.default_task if self.config.norm_init == "copy" else None
        for module in [*self.task_modules().values(), *self.task_params.values()]:
            module.add_task(source)
        self.heads.append(nn.Linear(self.spec.num_features, info.num_classes).to(device, dtype))
        used = self._used_units()
        for g in self.groups.values():
            embedding = nn.Parameter(initial_embedding(self.config, g, used[g.name], device, dtype))
            self.embeddings[group_key(g.name)].append(embedding)
            grown = torch.cat([self.masks(g.name), torch.zeros(1, g.size, dtype=torch.bool, device=device)])
            setattr(self, self._mask_buffer(g.name), grown)
        self.tasks.append(info)
        self._invalidate_gate_caches()
        return task

    def end_task(self, task: int) -> None:
        """Binarize task's gates (e > 0) and lock every weight its units and earlier units use."""
        self.check_task(task, allow_open=True)
        if self.tasks[task].status != "open":
            raise TaskError(f"task {task} has already ended; end_task is called once per task")
        self._set_status(task, "ended", lambda group: self.embedding(group, task).detach() > 0)

    def reopen_task(self, task: int) -> None:
        """Make an ended task trainable again; every other ended task stays locked."""
        self.check_task(task)
        current = self.open_task()
        if current is not None:
            raise TaskError(f"task {current} is open; end it before reopening task {task}")
        self._set_status(task, "open")

    def forget(self, task: int) -> None:
        """Drop a task: the units only it used become free for new tasks; others are untouched."""
        self.check_task(task, allow_open=True)
        self._set_status(task, "forgotten")

    def _set_status(self, task: int, status: TaskStatus, mask_row=lambda group: False) -> None:
        """Move a task to ``status`` with new mask rows (binarized, or none), then rebuild the locks."""
        self.enforce_locks()
        for group in self.groups:
            self.masks(group)[task] = mask_row(group)
        self.tasks[task].status = status
        self.refresh_locks()

    def check_task(self, task: Any, allow_open: bool = False) -> None:
        """Raise TaskError unless ``task`` exists, is not forgotten, and (unless allowed) has ended."""
        self.tasks.check(task, allow_open)

    @property
    def default_task(self) -> int | None:
        """The latest task that is not forgotten: what a checkpoint stores under plain names."""
        alive = self.tasks.alive()
        return alive[-1] if alive else None

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, task: int | None = None, scale: float | None = None) -> torch.Tensor:
        """Logits of ``task`` for a batch ``x``: soft gates at ``scale`` in training, binary in eval."""
        task = self.tasks.resolve(task)
        return self.heads[task](self._gated_features(x, task, scale))

    def forward_features(
        self, x: torch.Tensor, task: int | None = None, scale: float | None = None
    ) -> torch.Tensor:
        """The backbone's features under ``task``'s gates (what its head reads), as in :meth:`forward`."""
        return self._gated_features(x, self.tasks.resolve(task), scale)

    def _gated_features(self, x: torch.Tensor, task: int, scale: float | None) -> torch.Tensor:
        check_input(self.spec, x)
        if self.training:
            if self.tasks[task].status != "open":
                raise TaskError(
                    f"task {task} has ended and its units are locked; call model.eval() to run it, "
                    f"or model.reopen_task({task}) to train it again"
                )
            scale = self.config.smax if scale is None else scale
        check_scale(scale)
        if self.training:
            self._last_scale[task] = float(scale)
        self.enforce_locks()
        gates = self.gates(task, scale=scale if self.training else None)
        with self._context.run(task, gates):
            return self.backbone(x)

    # ----------------------------------------------------------------- gates and masks
    def gates(self, task: int, scale: float | None = None) -> dict[str, torch.Tensor]:
        """Gate vectors per group, expanded to activation width: binary when scale is None."""
        if scale is not None:
            return self._layout.split(self._flat_soft_gate(task, scale), self._gate_index)
        dtype = self._device_dtype()[1]
        if self.tasks[task].status == "open":
            return self._layout.split(self._flat_embedding(task).detach().gt(0).to(dtype), self._gate_index)
        if task not in self._binary_cache:
            flat = torch.cat([self.masks(g)[task] for g in self.groups]).to(dtype)
            self._binary_cache[task] = self._layout.split(flat, self._gate_index)
        return self._binary_cache[task]

    def _flat_embedding(self, task: int) -> torch.Tensor:
        return torch.cat([self.embedding(g, task) for g in self.groups])

    def _flat_soft_gate(self, task: int, scale: float) -> torch.Tensor:
        return soft_gate(self._flat_embedding(task), scale, self.config.smax, self.config.cosh_clamp)

    def _invalidate_gate_caches(self) -> None:
        self._binary_cache.clear()
        self._reg_weights.clear()

    def embedding(self, group: str, task: int) -> nn.Parameter:
        return self.embeddings[group_key(group)][task]

    def set_mask(self, group: str, task: int, mask: torch.Tensor) -> None:
        """Store task's binary mask of one group (for checkpoint loaders; call refresh_locks after)."""
        self.masks(group)[task] = mask.to(self.masks(group).device)
        self._invalidate_gate_caches()

    def _used_units(self, exclude: int | None = None) -> dict[str, torch.Tensor]:
        """Union of the binary masks of ended tasks (optionally without one task)."""
        ended = [t for t in self.tasks.ended() if t != exclude]
        return {g: self.masks(g)[ended].any(0) for g in self.groups}  # no ended task: all False

    def capacity(self) -> dict[str, dict[str, Any]]:
        """Per mask group: its size, the units each ended task uses, and how many are still free."""
        masks = {g: self.masks(g) for g in self.groups}
        return capacity_report(list(self.groups.values()), masks, self.tasks.ended(), self._used_units())

    def capacity_summary(self) -> str:
        """``capacity()`` as text: per group units used, free and full, then the totals."""
        return summarize(self.capacity())

    # ----------------------------------------------------------------- regularizer
    def regularization(self, task: int, scale: float | None = None) -> torch.Tensor:
        """The HAT mask regularizer: reg_c times the share of free units the task's gates open."""
        self.check_task(task, allow_open=True)
        scale = self._last_scale.get(task, self.config.smax) if scale is None else scale
        if task not in self._reg_weights:
            used = list(self._used_units(exclude=task).values())
            self._reg_weights[task] = regularizer_weights(self.config, used).to(*self._device_dtype())
        return self.config.reg_c * (self._flat_soft_gate(task, scale) * self._reg_weights[task]).sum()

    # ----------------------------------------------------------------- per-task parts
    def task_modules(self) -> dict[str, TaskModule]:
        """The per-task module wrappers (norms) by qualified backbone name."""
        return {n: m for n, m in self.backbone.named_modules() if isinstance(m, TaskModule)}

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The parameters created for one task (head, gates, norms, tokens), for ``add_param_group``."""
        self.check_task(task, allow_open=True)
        return self._per_task_tensors(task)

    def _per_task_tensors(self, task: int) -> list[nn.Parameter]:
        params = list(self.heads[task].parameters())
        params += [self.embedding(g.name, task) for g in self.groups.values()]
        for module in self.task_modules().values():
            params += list(module.tasks[task].parameters())
        params += [module.tasks[task] for module in self.task_params.values()]
        return params

    def specialize(self, task: int) -> nn.Module:
        """A plain module for one task with its masked units physically removed (eval mode)."""
        from hatzoo.core.specialize import specialize

        return specialize(self, task)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The inputs in timm's ``pretrained_cfg`` shape, so ``timm.data.resolve_data_config`` reads them."""
        return timm_pretrained_cfg(self.data_config, self.spec.input_shape)

    # ----------------------------------------------------------------- locks
    def locked_entries(self) -> dict[str, torch.Tensor]:
        """Bool masks of the locked entries, by parameter name; parameters with none locked are absent."""
        masks = {name: self._guard.locked_mask(p) for name, p in self.named_parameters()}
        return {name: mask for name, mask in masks.items() if mask is not None}

    def enforce_locks(self) -> None:
        """Write back the stored value of every locked entry changed since the last call."""
        self._guard.enforce()

    def refresh_locks(self) -> None:
        """Rebuild the locks and gate caches from the task states and masks (after loading or a change)."""
        self._invalidate_gate_caches()
        ended = self.tasks.ended()
        per_task = [self._per_task_tensors(t) for t in range(self.num_tasks)] if ended else []
        self._guard.set_locks(
            ended_task_locks(self.backbone, per_task, ended, self._slices, self._used_units())
        )
        current = self.open_task()
        embeddings = [] if current is None else [self.embedding(g, current) for g in self.groups]
        self._guard.set_clamps([(e, self.config.clamp) for e in embeddings])

    # ----------------------------------------------------------------- helpers
    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.backbone.parameters())
        return param.device, param.dtype

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        if getattr(self, "_guard", None) is not None:
            self._invalidate_gate_caches()
            if self._guard.has_locks():
                self.refresh_locks()  # the stored values must follow the tensors to their device / dtype
        return module

    def extra_repr(self) -> str:
        states = ", ".join(f"{i}:{info.status}" for i, info in enumerate(self.tasks)) or "none"
        return f"groups={len(self.groups)}, tasks=[{states}]"
