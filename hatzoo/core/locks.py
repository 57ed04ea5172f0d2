"""Gradient locks that hold whatever the optimizer does.

Zeroing the gradient of a locked weight is not enough: SGD momentum carried over from an earlier
task, Adam's moment estimates and AdamW's weight decay all move a weight whose gradient is zero.
So a ``LockGuard`` zeroes locked gradient entries (the optimizer state and gradient clipping then
see only free entries), zeroes the optimizer's per-entry state of locked entries once per lock
change, and, after every optimizer step and before every forward pass, writes back the exact
stored value of every locked entry whose tensor changed. Restoring copies stored bits, so earlier
tasks stay bitwise identical.

One pass is skipped where it provably changes nothing: a step of SGD, Adam or AdamW without
weight decay moves an entry whose gradient and state are exactly zero by exactly zero
(p - lr * 0), so after such a step the locked entries are known to hold their stored bits. The
gradients are checked to be still filtered (same tensor, unmodified since the filter ran) right
before the step; anything else is restored.
"""

from __future__ import annotations

import copy
import functools
import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

_GUARDS: weakref.WeakSet[LockGuard] = weakref.WeakSet()
# a step of these moves an entry with zero gradient and zero state by exactly zero (no weight decay)
EXACT_ON_ZERO = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


@dataclass
class _Lock:
    param: nn.Parameter
    locked: torch.Tensor | None  # bool, same shape; None: the whole tensor is locked
    snapshot: torch.Tensor
    version: int
    grad_mark: tuple[int, int] | None = None  # (id, version) of the gradient right after filtering


class LockGuard:
    """Keeps the locked entries of a set of parameters at their stored values."""

    def __init__(self) -> None:
        self._locks: dict[int, _Lock] = {}
        self._clamps: list[tuple[nn.Parameter, float]] = []
        self._clamp_versions: dict[int, int] = {}
        self._hooked: dict[int, RemovableHandle] = {}  # gradient filters, removed when unlocked
        self._generation = 0
        self._cleaned: weakref.WeakKeyDictionary[torch.optim.Optimizer, int] = weakref.WeakKeyDictionary()
        self._exact_step: weakref.WeakKeyDictionary[torch.optim.Optimizer, list[_Lock]] = (
            weakref.WeakKeyDictionary()
        )
        _GUARDS.add(self)
        _install_optimizer_hook()

    def set_locks(self, locks: list[tuple[nn.Parameter, torch.Tensor | None]]) -> None:
        """Replace every lock: each parameter with a bool mask of locked entries, or None for all."""
        self._locks = {}
        self._generation += 1
        for param, locked in locks:
            if locked is not None and not bool(locked.any()):
                continue
            snapshot = param.detach().clone()
            self._locks[id(param)] = _Lock(param, locked, snapshot, param._version)
            if id(param) not in self._hooked:
                self._hooked[id(param)] = param.register_post_accumulate_grad_hook(
                    self._gradient_filter(id(param))
                )
        for key in self._hooked.keys() - self._locks.keys():
            self._hooked.pop(key).remove()

    def set_clamps(self, clamps: list[tuple[nn.Parameter, float]]) -> None:
        """Parameters (the open task's embeddings) kept within [-bound, bound] after each step."""
        self._clamps = clamps
        self._clamp_versions: dict[int, int] = {}

    def __deepcopy__(self, memo: dict) -> LockGuard:
        """A guard over the copied parameters, with its gradient filters registered on them."""
        self.enforce()
        clone = LockGuard()
        clone.set_locks(copy.deepcopy([(lk.param, lk.locked) for lk in self._locks.values()], memo))
        clone.set_clamps(copy.deepcopy(self._clamps, memo))
        return clone

    def has_locks(self) -> bool:
        return bool(self._locks)

    def locked_mask(self, param: nn.Parameter) -> torch.Tensor | None:
        """Bool mask of the locked entries of ``param``, or None when none of them is locked."""
        lock = self._locks.get(id(param))
        if lock is None:
            return None
        return torch.ones_like(param, dtype=torch.bool) if lock.locked is None else lock.locked

    def _gradient_filter(self, key: int):
        def hook(param: nn.Parameter) -> None:
            lock = self._locks.get(key)
            if lock is not None and param.grad is not None:
                _filter(lock)

        return hook

    def steps(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether ``optimizer`` holds any parameter this guard locks or clamps (others leave it alone)."""
        guarded = self._locks.keys() | {id(p) for p, _ in self._clamps}
        return any(id(p) in guarded for group in optimizer.param_groups for p in group["params"])

    @torch.no_grad()
    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Make sure locked gradients are zero, and note which locks this step cannot move."""
        self.enforce()
        exact = type(optimizer) in EXACT_ON_ZERO and self._cleaned.get(optimizer) == self._generation
        unmoved = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                lock = self._locks.get(id(param))
                if lock is None or param.grad is None:
                    continue
                grad = param.grad
                if lock.grad_mark != (id(grad), grad._version):
                    _filter(lock)
                if exact and not group.get("weight_decay"):
                    unmoved.append(lock)
        self._exact_step[optimizer] = unmoved

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Accept the exact steps, restore everything else, then clear the optimizer's locked state."""
        for lock in self._exact_step.pop(optimizer, []):
            lock.version = lock.param._version
        self.enforce()
        self.clear_optimizer_state(optimizer)

    @torch.no_grad()
    def enforce(self) -> None:
        """Restore locked entries of every tensor modified since the last call; clamp embeddings.

        Whole-tensor restores and the clamps run as one ``torch._foreach_*`` kernel each; only
        tensors whose version changed are touched, so a forward pass after an exact step costs
        nothing here.
        """
        whole, snapshots, changed = [], [], []
        for lock in self._locks.values():
            param = lock.param
            if param._version == lock.version:
                continue
            changed.append(lock)
            if lock.locked is None:
                whole.append(param)
                snapshots.append(lock.snapshot)
            else:
                torch.where(lock.locked, lock.snapshot, param, out=param)
        if whole:
            torch._foreach_copy_(whole, snapshots)
        for lock in changed:
            lock.version = lock.param._version
        moved = [(p, b) for p, b in self._clamps if self._clamp_versions.get(id(p)) != p._version]
        for bound in {b for _, b in moved}:
            params = [p for p, b in moved if b == bound]
            torch._foreach_clamp_min_(params, -bound)
            torch._foreach_clamp_max_(params, bound)
        for param, _ in moved:
            self._clamp_versions[id(param)] = param._version

    @torch.no_grad()
    def clear_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the per-entry optimizer state (momentum, Adam moments) of locked entries, once per change.

        Locked entries get zero gradients, so that state only decays: left alone it sinks into
        subnormal floats, which slow every later optimizer step several times over. Zero is also
        what the state of an entry that was never updated holds, and it stays zero.
        """
        if self._cleaned.get(optimizer) == self._generation:
            return
        self._cleaned[optimizer] = self._generation
        for lock in self._locks.values():
            for value in optimizer.state.get(lock.param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == lock.param.shape:
                    if lock.locked is None:
                        value.zero_()
                    else:
                        value.masked_fill_(lock.locked, 0.0)


def _filter(lock: _Lock) -> None:
    grad = lock.param.grad
    if lock.locked is None:
        grad.zero_()
    else:
        grad.masked_fill_(lock.locked, 0.0)
    lock.grad_mark = (id(grad), grad._version)


def _before_optimizer_step(optimizer, args, kwargs) -> None:
    for guard in list(_GUARDS):
        if guard.steps(optimizer):
            guard.before_step(optimizer)


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    for guard in list(_GUARDS):
        if guard.steps(optimizer):
            guard.after_step(optimizer)


# Once per process, on the first guard: the hooks serve every guard, so the locks hold under any optimizer,
# created before or after the model, with no call to connect them (an optimizer's own step hooks would
# need each optimizer to be handed to the model). A guard acts only on optimizers that hold its parameters.
@functools.cache
def _install_optimizer_hook() -> None:
    register_optimizer_step_pre_hook(_before_optimizer_step)
    register_optimizer_step_post_hook(_after_optimizer_step)
