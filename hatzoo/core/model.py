"""The HAT model: a backbone with per-task gates, heads, norms, and locks that make forgetting zero."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from hatzoo.core.capacity import CapacityWarning, full_group_message, summarize
from hatzoo.core.config import HATConfig
from hatzoo.core.gates import apply_gate, soft_gate
from hatzoo.core.groups import MaskGroup, UnitSlice, group_key
from hatzoo.core.locks import LockGuard
from hatzoo.core.spec import PolicySpec
from hatzoo.core.task_modules import TaskContext, TaskModule, TaskParameter
from hatzoo.errors import InputError, TaskError

TaskStatus = Literal["open", "ended", "forgotten"]
BUDGET_WIDTH = 1024  # mask_init="budget": a narrower group gives a task the budget of one this wide


@dataclass
class TaskInfo:
    """What is known of one task: its classes and where it is in its life cycle."""

    num_classes: int
    labels: list[str]
    status: TaskStatus = "open"


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
        self.tasks: list[TaskInfo] = []
        self._context = TaskContext()
        self._last_scale: dict[int, float] = {}
        # how inputs are prepared (mean, std, input_shape, benchmark): stored in checkpoints, used by export
        self.data_config: dict[str, Any] = {}
        self.backbone = backbone
        self.heads = nn.ModuleList()
        self.embeddings = nn.ModuleDict({group_key(g.name): nn.ParameterList() for g in spec.groups})
        for g in spec.groups:
            self.register_buffer(self._mask_buffer(g.name), torch.zeros(0, g.size, dtype=torch.bool))
        self._wrap_per_task_parts(spec)
        self._install_gates(spec.groups)
        self._slices = self._index_slices(spec.groups)
        self._register_gate_layout(spec.groups)
        self._binary_cache: dict[int, dict[str, torch.Tensor]] = {}
        self._reg_weights: dict[int, torch.Tensor] = {}
        self._warned_full: set[str] = set()
        self._guard = LockGuard()

    # ----------------------------------------------------------------- construction
    def _wrap_per_task_parts(self, spec: PolicySpec) -> None:
        self.task_params = nn.ModuleDict()
        for name in spec.per_task_modules:
            self.backbone.set_submodule(name, TaskModule(self.backbone.get_submodule(name), self._context))
        for host_name, attr in spec.per_task_params:
            key = group_key(f"{host_name}.{attr}" if host_name else attr)
            self.task_params[key] = TaskParameter(self.backbone.get_submodule(host_name), attr, self._context)

    def _install_gates(self, groups: list[MaskGroup]) -> None:
        self._gate_hooks = []  # the handles of the gate hooks: the user's own hooks are never touched
        for g in groups:
            module = self.backbone.get_submodule(g.gate.module)
            hook = GateHook(self._context, g.name, g.gate.dim)
            if g.gate.where == "output":
                self._gate_hooks.append(module.register_forward_hook(hook.on_output))
            else:
                self._gate_hooks.append(module.register_forward_pre_hook(hook.on_input))

    def hook_ids(self) -> set[int]:
        """The ids of the forward hooks this model put on its backbone (gates, per-task tensors).

        A copy of the backbone keeps them as its hooks' keys, so they can be removed there too.
        """
        return {h.id for h in self._gate_hooks} | {p.hook.id for p in self.task_params.values()}

    def _register_gate_layout(self, groups: list[MaskGroup]) -> None:
        """All groups' gates live in one flat vector: units in group order, then expanded to activations.

        Computing every gate of a forward pass together costs a handful of kernels instead of a few
        per group, and the expansion (a head's unit covers head_dim activations) is one gather.
        """
        self._act_sizes = [g.size * g.gate.expand for g in groups]
        expand = torch.tensor([g.gate.expand for g in groups], dtype=torch.long)
        per_unit = expand.repeat_interleave(torch.tensor([g.size for g in groups], dtype=torch.long))
        index = torch.arange(len(per_unit)).repeat_interleave(per_unit)  # flat unit of each activation
        expands = any(g.gate.expand > 1 for g in groups)
        self.register_buffer("_gate_index", index if expands else None, persistent=False)

    def _index_slices(self, groups: list[MaskGroup]) -> dict[str, list[tuple[str, UnitSlice]]]:
        """Map each backbone tensor ('module.tensor') to the (group, slice) pairs that touch it."""
        index: dict[str, list[tuple[str, UnitSlice]]] = {}
        for g in groups:
            for _, s in g.slices():
                index.setdefault(f"{s.module}.{s.tensor}", []).append((g.name, s))
        return index

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
        return next((i for i, info in enumerate(self.tasks) if info.status == "open"), None)

    def add_task(self, num_classes: int, labels: list[str] | None = None) -> int:
        """Add a task with its own head, gates, norms and tokens; returns its id."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise InputError(f"num_classes must be a positive int, got {num_classes!r}")
        labels = [str(i) for i in range(num_classes)] if labels is None else [str(x) for x in labels]
        if len(labels) != num_classes:
            raise InputError(
                f"got {len(labels)} labels for num_classes={num_classes}; give one label per class"
            )
        current = self.open_task()
        if current is not None:
            raise TaskError(f"task {current} is still open; call end_task({current}) before adding a task")
        self._warn_if_full()
        task = self.restore_task(TaskInfo(num_classes=num_classes, labels=labels))
        self.refresh_locks()
        return task

    def _warn_if_full(self) -> None:
        """Warn once per group when a new task finds it with no free unit."""
        full = [name for name, info in self.capacity().items() if info["free"] == 0]
        if new := [name for name in full if name not in self._warned_full]:
            self._warned_full.update(new)
            warnings.warn(full_group_message(new), CapacityWarning, stacklevel=3)

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
        for g in self.groups.values():
            embedding = nn.Parameter(self._initial_embedding(g, device, dtype))
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

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, task: int | None = None, scale: float | None = None) -> torch.Tensor:
        """Logits of ``task`` for a batch ``x``: soft gates at ``scale`` in training, binary in eval."""
        task = self._resolve_task(task)
        return self.heads[task](self._gated_features(x, task, scale))

    def forward_features(
        self, x: torch.Tensor, task: int | None = None, scale: float | None = None
    ) -> torch.Tensor:
        """The backbone's features under ``task``'s gates (what its head reads), as in :meth:`forward`."""
        return self._gated_features(x, self._resolve_task(task), scale)

    def _gated_features(self, x: torch.Tensor, task: int, scale: float | None) -> torch.Tensor:
        self._check_input(x)
        if self.training:
            if self.tasks[task].status != "open":
                raise TaskError(
                    f"task {task} has ended and its units are locked; call model.eval() to run it, "
                    f"or model.reopen_task({task}) to train it again"
                )
            scale = self.config.smax if scale is None else scale
        if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
            raise InputError(f"scale must be a number > 0, got {scale!r}")
        if self.training:
            self._last_scale[task] = float(scale)
        self.enforce_locks()
        gates = self.gates(task, scale=scale if self.training else None)
        with self._context.run(task, gates):
            return self.backbone(x)

    def gates(self, task: int, scale: float | None = None) -> dict[str, torch.Tensor]:
        """Gate vectors per group, expanded to activation width: binary when scale is None."""
        if scale is not None:
            return self._split_gates(self._flat_soft_gate(task, scale))
        if self.tasks[task].status == "open":
            return self._split_gates(self._flat_embedding(task).detach().gt(0).to(self._device_dtype()[1]))
        if task not in self._binary_cache:
            flat = torch.cat([self.masks(g)[task] for g in self.groups]).to(self._device_dtype()[1])
            self._binary_cache[task] = self._split_gates(flat)
        return self._binary_cache[task]

    def _flat_embedding(self, task: int) -> torch.Tensor:
        return torch.cat([self.embedding(g, task) for g in self.groups])

    def _flat_soft_gate(self, task: int, scale: float) -> torch.Tensor:
        return soft_gate(self._flat_embedding(task), scale, self.config.smax, self.config.cosh_clamp)

    def _split_gates(self, units: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat per-unit vector -> per-group gates at activation width (views of one tensor)."""
        flat = units if self._gate_index is None else units.index_select(0, self._gate_index)
        return dict(zip(self.groups, flat.split(self._act_sizes), strict=True))

    def _invalidate_gate_caches(self) -> None:
        self._binary_cache.clear()
        self._reg_weights.clear()

    def embedding(self, group: str, task: int) -> nn.Parameter:
        return self.embeddings[group_key(group)][task]

    def set_mask(self, group: str, task: int, mask: torch.Tensor) -> None:
        """Store task's binary mask of one group (for checkpoint loaders; call refresh_locks after)."""
        self.masks(group)[task] = mask.to(self.masks(group).device)
        self._invalidate_gate_caches()

    @property
    def default_task(self) -> int | None:
        """The latest task that is not forgotten: what a checkpoint stores under plain names."""
        alive = self._alive_tasks()
        return alive[-1] if alive else None

    def task_modules(self) -> dict[str, TaskModule]:
        """The per-task module wrappers (norms) by qualified backbone name."""
        return {n: m for n, m in self.backbone.named_modules() if isinstance(m, TaskModule)}

    # ----------------------------------------------------------------- regularizer
    def regularization(self, task: int, scale: float | None = None) -> torch.Tensor:
        """The HAT mask regularizer: reg_c times the share of free units the task's gates open."""
        self.check_task(task, allow_open=True)
        scale = self._last_scale.get(task, self.config.smax) if scale is None else scale
        if task not in self._reg_weights:
            self._reg_weights[task] = self._regularizer_weights(task)
        return self.config.reg_c * (self._flat_soft_gate(task, scale) * self._reg_weights[task]).sum()

    def _regularizer_weights(self, task: int) -> torch.Tensor:
        """Per-unit weights w such that sum(gate * w) is the regularizer's ratio; fixed until masks change.

        "global": free units / all free units; "per_layer": the mean over groups with free units of
        each group's free-unit ratio. Used units (of other ended tasks) weigh nothing.
        """
        used = self._used_units(exclude=task)
        free = [(~used[g]).cpu() for g in self.groups]
        counts = [int(f.sum()) for f in free]
        if self.config.reg_mode == "per_layer":
            groups_with_free = sum(1 for c in counts if c)
            scales = [1.0 / (c * groups_with_free) if c else 0.0 for c in counts]
        else:
            scales = [1.0 / sum(counts) if sum(counts) else 0.0] * len(counts)
        weights = torch.cat([f.to(torch.float64) * w for f, w in zip(free, scales, strict=True)])
        return weights.to(*self._device_dtype())

    # ----------------------------------------------------------------- capacity
    def capacity(self) -> dict[str, dict[str, Any]]:
        """Per mask group: its size, the units each ended task uses, and how many are still free."""
        ended, used = self._ended_tasks(), self._used_units()
        return {
            g.name: {
                "size": g.size,
                "used": {t: int(self.masks(g.name)[t].sum()) for t in ended},
                "free": g.size - int(used[g.name].sum()),
            }
            for g in self.groups.values()
        }

    def capacity_summary(self) -> str:
        """``capacity()`` as text: per group units used, free and full, then the totals."""
        return summarize(self.capacity())

    # ----------------------------------------------------------------- specialization
    def specialize(self, task: int) -> nn.Module:
        """A plain module for one task with its masked units physically removed (eval mode)."""
        from hatzoo.core.specialize import specialize

        return specialize(self, task)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The parameters created for one task (head, gates, norms, tokens), for ``add_param_group``."""
        self.check_task(task, allow_open=True)
        return self._per_task_tensors(task)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The inputs in timm's ``pretrained_cfg`` shape, so ``timm.data.resolve_data_config`` reads them."""
        from hatzoo.core.specialize import timm_data_config

        return timm_data_config(self.data_config)

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
        ended = self._ended_tasks()
        locks: list[tuple[nn.Parameter, torch.Tensor | None]] = []
        if ended:
            used = self._used_units()
            per_task = {id(p) for t in range(self.num_tasks) for p in self._per_task_tensors(t)}
            for name, param in self.backbone.named_parameters():
                if id(param) in per_task:
                    continue
                lock = self._lock_mask(param, self._slices.get(name, []), used)
                if lock is not False:
                    locks.append((param, lock))
        for t in ended:
            locks += [(p, None) for p in self._per_task_tensors(t)]
        self._guard.set_locks(locks)
        current = self.open_task()
        clamps = (
            [] if current is None else [(self.embedding(g, current), self.config.clamp) for g in self.groups]
        )
        self._guard.set_clamps(clamps)

    @staticmethod
    def _lock_mask(
        param: nn.Parameter, slices: list[tuple[str, UnitSlice]], used: dict[str, torch.Tensor]
    ) -> torch.Tensor | None | bool:
        """Locked entries of one shared tensor: None when all are, False when none, else a bool mask.

        An entry is locked when every unit it touches (along each sliced dim) is used; dims that no
        group slices count as used. Built from per-dim vectors, so fully locked tensors cost nothing.
        """
        per_dim: dict[int, torch.Tensor] = {}
        for group, s in slices:
            entries = s.entry_mask(used[group]).to(param.device)
            per_dim[s.dim] = per_dim[s.dim] & entries if s.dim in per_dim else entries
        if all(bool(v.all()) for v in per_dim.values()):
            return None
        if any(not bool(v.any()) for v in per_dim.values()):
            return False
        locked = torch.ones_like(param, dtype=torch.bool)
        for dim, entries in per_dim.items():
            locked = apply_gate(locked, entries, dim)  # bool * bool is a logical and
        return locked

    def _per_task_tensors(self, task: int) -> list[nn.Parameter]:
        params = list(self.heads[task].parameters())
        params += [self.embedding(g.name, task) for g in self.groups.values()]
        for module in self.task_modules().values():
            params += list(module.tasks[task].parameters())
        params += [module.tasks[task] for module in self.task_params.values()]
        return params

    def _used_units(self, exclude: int | None = None) -> dict[str, torch.Tensor]:
        """Union of the binary masks of ended tasks (optionally without one task)."""
        ended = [t for t in self._ended_tasks() if t != exclude]
        return {g: self.masks(g)[ended].any(0) for g in self.groups}  # no ended task: all False

    # ----------------------------------------------------------------- checks and helpers
    def _ended_tasks(self) -> list[int]:
        return [i for i, info in enumerate(self.tasks) if info.status == "ended"]

    def _alive_tasks(self) -> list[int]:
        return [i for i, info in enumerate(self.tasks) if info.status != "forgotten"]

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.backbone.parameters())
        return param.device, param.dtype

    def _initial_embedding(self, group: MaskGroup, device, dtype) -> torch.Tensor:
        if self.config.mask_init == "normal":
            return torch.randn(group.size, device=device, dtype=dtype)
        if self.config.mask_init == "budget":
            return self._budget_embedding(group, device, dtype)
        value = 1.0 if self.config.mask_init == "dense" else -1.0
        return torch.full((group.size,), value, device=device, dtype=dtype)

    def _budget_embedding(self, group: MaskGroup, device, dtype) -> torch.Tensor:
        """N(0, 1) on the units ended tasks use (about half reused); on free units +1 for about
        task_budget * size of them, -1 elsewhere.

        A group narrower than BUDGET_WIDTH gives what one of that width would (task_budget *
        BUDGET_WIDTH units), at most half of what is free: a 64-unit layer starts its first tasks as
        the paper's start does, rather than with 2 units that learn nothing, and a smaller
        task_budget still makes every group last longer. Each free unit opens with probability
        budget / free, so a group smaller than 1 / task_budget (a block's few attention heads) still
        hands out a unit every few tasks rather than none. Reusing only some used units keeps units
        exclusive to each task, which ``forget`` can free.
        """
        used = self._used_units()[group.name].to(device)
        free = group.size - int(used.sum())
        share = self.config.task_budget
        budget = max(share * group.size, min(share * BUDGET_WIDTH, free / 2))
        chance = min(1.0, budget / free) if free else 0.0
        start = torch.randn(group.size, device=device)  # the paper's magnitudes, so masks learn as fast
        drawn = torch.rand(group.size, device=device) < chance
        return torch.where(used, start, torch.where(drawn, start.abs(), -start.abs())).to(dtype)

    def check_task(self, task: Any, allow_open: bool = False) -> None:
        """Raise TaskError unless ``task`` exists, is not forgotten, and (unless allowed) has ended."""
        if not isinstance(task, int) or isinstance(task, bool):
            raise TaskError(f"task must be an int task id, got {task!r}")
        if not 0 <= task < self.num_tasks:
            known = f"0..{self.num_tasks - 1}" if self.num_tasks else "none yet; call add_task first"
            raise TaskError(f"task {task} does not exist (tasks: {known})")
        status = self.tasks[task].status
        if status == "forgotten":
            raise TaskError(f"task {task} was forgotten; its units may have been reused")
        if status == "open" and not allow_open:
            raise TaskError(f"task {task} is still open; call end_task({task}) first")

    def _resolve_task(self, task: int | None) -> int:
        if task is None:
            alive = self._alive_tasks()
            if len(alive) != 1:
                raise TaskError(f"this model has {len(alive)} tasks: say which one with task=")
            task = alive[0]
        self.check_task(task, allow_open=True)
        return task

    def _check_input(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputError(f"input must be a floating-point tensor, got {x.dtype}")
        expected = self.spec.input_shape
        if expected is None:
            numel = x[0].numel() if x.ndim > 1 else -1
            if numel != self.spec.input_numel:
                raise InputError(
                    f"expected a batch of inputs with {self.spec.input_numel} values each, "
                    f"got shape {tuple(x.shape)}"
                )
            return
        detail = ""
        if x.ndim == len(expected) + 1:
            for axis, (want, got) in enumerate(zip(expected, x.shape[1:], strict=True), start=1):
                if want is not None and want != got:
                    what = "channels" if axis == 1 and len(expected) == 3 else f"size of dim {axis}"
                    detail = f": wrong {what} ({got} instead of {want})"
                    break
            else:
                return  # the shape fits: the message below is built only for a bad input
        shape = ", ".join("?" if d is None else str(d) for d in expected)
        raise InputError(f"expected input of shape (batch, {shape}), got {tuple(x.shape)}{detail}")

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
