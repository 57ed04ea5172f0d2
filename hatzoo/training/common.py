"""What the sequential and the joint trainer share: model, data and optimizer, seeding, one epoch.

A :class:`Runtime` says where and how a run computes: the device (checked before any work starts),
bf16 autocast or plain fp32, progress bars, and this process's place in a DDP job. Autocast covers
the forward pass and the loss only; parameters and optimizer state stay float32 (master weights).
On CUDA every batch is copied from pinned memory with ``non_blocking=True``. Per-step numbers stay
on the device and are read back once per epoch, so a step never waits for the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from hatzoo import progress
from hatzoo.core.model import HATModel
from hatzoo.data import TaskSequence, get_benchmark
from hatzoo.errors import InputError
from hatzoo.optimizers import OPTIMIZERS
from hatzoo.training import ddp
from hatzoo.training.recipe import Recipe

ModelFactory = Callable[[], HATModel]


def derive_seed(base: int, *parts: int) -> int:
    """An independent 63-bit seed for one purpose (model init, task t, epoch e shuffle, ...)."""
    return int(np.random.SeedSequence([base, *parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def build_model(
    recipe: Recipe, factory: ModelFactory | None = None, input_shape: Sequence[int] | None = None
) -> HATModel:
    """A fresh HAT model of the recipe's architecture (or from ``factory``), seeded by the recipe.

    The input arguments the recipe leaves out come from the data's ``input_shape`` (see
    :func:`input_args`), so ``--arch`` alone builds a model that takes the benchmark's images.
    """
    torch.manual_seed(derive_seed(recipe.recipe.seed, 0))
    if factory is not None:
        return factory()
    from hatzoo.model import create_model  # here: importing timm takes seconds

    args = {
        **(input_args(recipe.arch, input_shape, recipe.model_args) if input_shape else {}),
        **recipe.model_args,
    }
    return create_model(recipe.arch, config=dataclasses.replace(recipe.hat), **args)


def input_args(arch: str, input_shape: Sequence[int], given: dict[str, Any]) -> dict[str, Any]:
    """The arguments ``given`` lacks to make zoo architecture ``arch`` take images of ``(C, H, W)``.

    ``in_chans``; for a ViT whose size is not given also ``img_size`` and ``patch_size``: timm's 16
    from 64 px up, else the largest patch that leaves at least a 4x4 grid (7 at 28 px, as the zoo's
    ViTs use).
    """
    c, h, w = input_shape
    args: dict[str, Any] = {"in_chans": c}
    if "vit" in arch and not {"img_size", "patch_size"} & set(given):
        side = min(h, w)
        divides = [d for d in range(1, side // 4 + 1) if h % d == w % d == 0]
        args["img_size"] = h if h == w else [h, w]
        args["patch_size"] = 16 if side >= 64 and 16 in divides else max(divides)
    return {k: v for k, v in args.items() if k not in given}


def load_benchmark(recipe: Recipe, *, holdout: bool = True) -> TaskSequence:
    """The recipe's task sequence (DataError from hatzoo.data passes through with its how-to-fix text).

    With ``benchmark.validation`` set, each task's training split lacks its validation rows
    (``held_out``), unless ``holdout=False``: the whole split, for carving them.
    """
    b = recipe.benchmark
    seq = get_benchmark(b.name, seed=b.seed, max_train_per_task=b.max_train_per_task, **b.options)
    if b.max_tasks is not None and b.max_tasks < len(seq):
        seq = dataclasses.replace(seq, tasks=seq.tasks[: b.max_tasks])
    if holdout and b.validation:
        seq, _ = held_out(seq, b.validation, b.seed)
    return seq


def held_out(
    seq: TaskSequence, fraction: float, seed: int
) -> tuple[TaskSequence, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """``seq`` with each task's training split less a seeded ``fraction`` of its rows (at least one),
    the rest kept in order, and those rows per task as (x, y): the validation split."""
    tasks, val = [], {}
    for t, task in enumerate(seq):
        gen = torch.Generator().manual_seed(derive_seed(seed, 11, t))
        rows = torch.randperm(len(task.train), generator=gen)[: max(1, int(fraction * len(task.train)))]
        keep = torch.ones(len(task.train), dtype=torch.bool)
        keep[rows] = False
        x, y = task.train.tensors
        val[t] = (x[rows], y[rows])
        tasks.append(dataclasses.replace(task, train=TensorDataset(x[keep], y[keep])))
    return dataclasses.replace(seq, tasks=tasks, options={**seq.options, "validation": fraction}), val


def make_optimizer(recipe: Recipe, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The recipe's optimizer over one first parameter group; tasks are added with add_param_group."""
    return OPTIMIZERS.get(recipe.recipe.optimizer)(params, recipe.recipe)


def add_task_params(optimizer: torch.optim.Optimizer, recipe: Recipe, model: HATModel, task: int) -> None:
    """Let task ``task``'s parameters join ``optimizer`` (``add_param_group``).

    With ``recipe.mask_lr`` set, the task's gate embeddings get their own group at that learning rate
    (and no weight decay): with Adam an embedding moves only about lr per step, so at lr 1e-3 the masks
    would stay at their random initialisation and the regularizer could not shape them.
    """
    params, mask_lr = model.task_parameters(task), recipe.recipe.mask_lr
    gates = set() if mask_lr is None else {id(model.embedding(g, task)) for g in model.groups}
    rest = [p for p in params if id(p) not in gates]
    embeddings = [p for p in params if id(p) in gates]
    optimizer.add_param_group({"params": rest, "base_lr": recipe.recipe.lr})
    if embeddings:
        optimizer.add_param_group(
            {"params": embeddings, "lr": mask_lr, "base_lr": mask_lr, "weight_decay": 0.0}
        )


def set_lr(optimizer: torch.optim.Optimizer, recipe: Recipe, step: int, total: int) -> None:
    """Set each group's learning rate at ``step`` of ``total`` (the within-task schedule): its ``base_lr``,
    times a cosine decay towards 0 under the cosine schedule."""
    cosine = recipe.recipe.lr_schedule != "constant" and total > 1
    factor = 0.5 * (1.0 + math.cos(math.pi * step / total)) if cosine else 1.0
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def shared_parameters(model: HATModel) -> list[nn.Parameter]:
    """Parameters that belong to no task (the masked backbone weights), in registration order."""
    per_task = {id(p) for t in range(model.num_tasks) for p in model.task_parameters(t)}
    return [p for p in model.parameters() if id(p) not in per_task]


PRECISIONS = ("fp32", "bf16")
EVAL_BATCH = 512
POSTFIX_EVERY = 10

# (batch index in the epoch, this rank's batch on the device, weight of a summed loss) -> (loss, stats)
LossFn = Callable[[int, list[torch.Tensor], float], tuple[torch.Tensor, torch.Tensor]]


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, refused with a clear error when it does not exist on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from err
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)
    if backend is None or not backend.is_available():
        raise InputError(
            f"device {device!r} is not available on this machine (torch {torch.__version__} finds no "
            f"{dev.type} device); use --device cpu, or run on a machine with one"
        )
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise InputError(f"device {device!r} does not exist: this machine has {count} {dev.type} device(s)")
    return dev


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how a run computes: device, precision (``fp32`` or ``bf16`` autocast), progress, DDP."""

    device: torch.device = torch.device("cpu")
    amp: str = "fp32"
    progress: bool = True
    ctx: ddp.DistContext = dataclasses.field(default_factory=ddp.DistContext)

    @classmethod
    def create(cls, device: str | torch.device = "cpu", amp: str = "fp32", progress: bool = True) -> Runtime:
        """Check ``device`` and ``amp``, join the DDP job if torchrun started one, and return the runtime."""
        if amp not in PRECISIONS:
            raise InputError(f"unknown precision {amp!r}; choose one of {', '.join(PRECISIONS)}")
        return cls(resolve_device(device), amp, progress, ddp.init_distributed())

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for a forward pass and its loss (a no-op in fp32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16")

    def to_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Copy a batch to the device: from pinned memory and without blocking on CUDA."""
        if self.device.type != "cuda":
            return [t.to(self.device) for t in tensors]
        return [t.pin_memory().to(self.device, non_blocking=True) for t in tensors]

    @property
    def shows_progress(self) -> bool:
        """Progress is on and this is the main rank."""
        return self.progress and self.ctx.is_main

    def bar(self, items: Sequence, desc: str, first: int = 0) -> tqdm:
        """A progress bar over ``items[first:]``: drawn on a terminal, on the main rank, with progress on."""
        return progress.bar(items, desc, enabled=self.shows_progress, first=first)


def train_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    data: Sequence[torch.Tensor],
    batches: list[torch.Tensor],
    step: int,
    total: int,
    loss_fn: LossFn,
    rt: Runtime,
    desc: str,
    first: int = 0,
    after_step: Callable[[int], None] | None = None,
) -> list[float]:
    """One epoch over ``batches`` (global index batches into ``data``), from batch ``first`` on.

    ``step`` and ``total`` place the epoch in the learning-rate schedule. ``loss_fn`` gets this rank's
    rows already on the device and the weight that turns a loss summed over them into this rank's share
    of the global batch mean; it returns the loss to minimise and a vector of numbers to sum. Returns
    those sums over the batches run and all ranks, followed by the number of examples seen.
    ``after_step(b)`` is called after batch b's optimizer step (to write a checkpoint).
    """
    sums: torch.Tensor | None = None
    count = 0
    start = time.perf_counter()
    bar = rt.bar(batches, desc, first)
    for b, idx in enumerate(bar, start=first):
        set_lr(optimizer, recipe, step + b, total)
        batch = rt.to_device(*(d[ddp.shard(idx, rt.ctx)] for d in data))
        with rt.autocast():
            loss, stats = loss_fn(b, batch, rt.ctx.world_size / len(idx))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.recipe.clip_grad is not None:
            nn.utils.clip_grad_norm_(net.parameters(), recipe.recipe.clip_grad)
        optimizer.step()
        stats = stats.detach().double()
        sums = stats if sums is None else sums + stats
        count += len(batch[0])
        if not bar.disable and b % POSTFIX_EVERY == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if after_step is not None:
            after_step(b)
    if sums is not None and rt.shows_progress and not progress.interactive():
        seconds = time.perf_counter() - start
        progress.log_line(
            f"{desc}: {len(batches) - first} batches in {seconds:.1f} s, last loss {loss.item():.4f}"
        )
    return rt.ctx.all_sum([*(sums.tolist() if sums is not None else []), count])


@torch.no_grad()
def accuracy(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    rt: Runtime,
    desc: str,
) -> float:
    """Fraction of rows of ``x`` whose arg-max logit is ``y`` (rows sharded over ranks under DDP)."""
    rows = ddp.shard(torch.arange(len(y)), rt.ctx)
    correct = torch.zeros((), dtype=torch.long, device=rt.device)
    for chunk in rt.bar(rows.split(EVAL_BATCH), desc):
        xb, yb = rt.to_device(x[chunk], y[chunk])
        with rt.autocast():
            correct += (logits_fn(xb).argmax(1) == yb).sum()
    hits, count = rt.ctx.all_sum([float(correct), float(len(rows))])
    if rt.shows_progress and not progress.interactive():
        progress.log_line(f"{desc}: {int(count)} images, accuracy {100 * hits / count:.2f}%")
    return hits / count
