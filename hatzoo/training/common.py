"""What the sequential and the joint trainer share: building the model, data and optimizer, seeding."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from hatzoo.core.model import HATModel
from hatzoo.data import TaskSequence, get_benchmark
from hatzoo.training.optimizers import OPTIMIZERS
from hatzoo.training.recipe import Recipe

ModelFactory = Callable[[], HATModel]


def derive_seed(base: int, *parts: int) -> int:
    """An independent 63-bit seed for one purpose (model init, task t, epoch e shuffle, ...)."""
    return int(np.random.SeedSequence([base, *parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def build_model(recipe: Recipe, factory: ModelFactory | None = None) -> HATModel:
    """A fresh HAT model of the recipe's architecture (or from ``factory``), seeded by the recipe."""
    torch.manual_seed(derive_seed(recipe.recipe.seed, 0))
    if factory is not None:
        return factory()
    from hatzoo.zoo import create_model

    return create_model(recipe.arch, config=dataclasses.replace(recipe.hat), **recipe.model_args)


def load_benchmark(recipe: Recipe) -> TaskSequence:
    """The recipe's task sequence (DataError from hatzoo.data passes through with its how-to-fix text)."""
    b = recipe.benchmark
    seq = get_benchmark(b.name, seed=b.seed, max_train_per_task=b.max_train_per_task, **b.options)
    if b.max_tasks is not None and b.max_tasks < len(seq):
        seq = dataclasses.replace(seq, tasks=seq.tasks[: b.max_tasks])
    return seq


def make_optimizer(recipe: Recipe, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The recipe's optimizer over one first parameter group; tasks are added with add_param_group."""
    return OPTIMIZERS.get(recipe.recipe.optimizer)(params, recipe.recipe)


def task_param_groups(recipe: Recipe, model: HATModel, task: int) -> list[dict]:
    """Task ``task``'s parameters as optimizer groups for ``add_param_group``.

    With ``recipe.mask_lr`` set, the task's gate embeddings get their own group at that learning rate
    (and no weight decay): with Adam an embedding moves only about lr per step, so at lr 1e-3 the masks
    would stay at their random initialisation and the regularizer could not shape them.
    """
    params = model.task_parameters(task)
    mask_lr = recipe.recipe.mask_lr
    if mask_lr is None:
        return [{"params": params, "base_lr": recipe.recipe.lr}]
    gates = {id(model.embedding(g, task)) for g in model.groups}
    rest = [p for p in params if id(p) not in gates]
    embeddings = [p for p in params if id(p) in gates]
    groups = [{"params": rest, "base_lr": recipe.recipe.lr}]
    groups.append({"params": embeddings, "lr": mask_lr, "base_lr": mask_lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Scale every group's learning rate to ``factor`` times its ``base_lr`` (the within-task schedule)."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def lr_factor(recipe: Recipe, step: int, total: int) -> float:
    """The learning-rate multiplier at ``step`` of ``total`` steps: 1, or a cosine decay towards 0."""
    if recipe.recipe.lr_schedule == "constant" or total <= 1:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


def shared_parameters(model: HATModel) -> list[nn.Parameter]:
    """Parameters that belong to no task (the masked backbone weights), in registration order."""
    per_task = {id(p) for t in range(model.num_tasks) for p in model.task_parameters(t)}
    return [p for p in model.parameters() if id(p) not in per_task]
