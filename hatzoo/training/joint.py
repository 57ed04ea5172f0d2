"""The joint-training upper bound: the same backbone, one head per task, all tasks' data mixed at once.

This is ordinary (non-continual) multi-head training with plain torch, no HAT gates: the backbone is
rebuilt from the HAT model's architecture description with fresh weights, and trained with the same
optimizer, learning rate (and lr schedule, over the whole run), batch size and number of epochs over
the union of the tasks' training sets (so the same number of examples is seen as in the sequential
run). Its per-task test accuracy is what HAT is compared against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hatzoo.core.arch import build_backbone
from hatzoo.core.model import HATModel
from hatzoo.data import TaskSequence
from hatzoo.policies.plain import strip_classifier
from hatzoo.training import ddp
from hatzoo.training.common import (
    ModelFactory,
    Runtime,
    accuracy,
    build_model,
    derive_seed,
    load_benchmark,
    make_optimizer,
    train_epoch,
)
from hatzoo.training.recipe import Recipe


@dataclass
class JointResults:
    """Per-task test accuracy of the joint upper bound and how long it took."""

    accuracy: list[float]
    seconds: float

    @property
    def average(self) -> float:
        return sum(self.accuracy) / len(self.accuracy)


class JointNet(nn.Module):
    """A plain backbone with one linear head per task; ``forward`` gives the summed loss of a mixed batch."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: list[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(nn.Linear(num_features, k) for k in num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        total = features.new_zeros(())
        for t in task_ids.unique().tolist():
            rows = task_ids == t
            total = total + F.cross_entropy(self.heads[t](features[rows]), y[rows], reduction="sum")
        return total

    def logits(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.heads[task](self.backbone(x))


def plain_backbone(model: HATModel) -> nn.Module:
    """A fresh, un-hatified copy of a HAT model's backbone architecture (no classifier)."""
    arch = model.spec.arch
    backbone = build_backbone(arch)
    if arch.get("source") == "sequential":
        backbone, _ = strip_classifier(backbone)
    return backbone


def train_joint(
    recipe: Recipe,
    *,
    seq: TaskSequence | None = None,
    model_factory: ModelFactory | None = None,
    runtime: Runtime | None = None,
) -> JointResults:
    """Train the joint upper bound for ``recipe`` and return its per-task test accuracies."""
    rt = runtime or Runtime.create()
    seq = seq if seq is not None else load_benchmark(recipe)
    template = build_model(recipe, model_factory, seq.input_shape)
    torch.manual_seed(derive_seed(recipe.recipe.seed, 7))
    net = JointNet(plain_backbone(template), template.spec.num_features, seq.num_classes).to(rt.device)
    del template
    data = [torch.cat(parts) for parts in zip(*(task.train.tensors for task in seq), strict=True)]
    data.append(torch.repeat_interleave(torch.tensor([len(task.train) for task in seq])))  # task ids
    optimizer = make_optimizer(recipe, net.parameters())
    trainer = ddp.wrap(net, rt.ctx, rt.device)

    def loss_fn(b: int, batch: list[torch.Tensor], weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        loss = trainer(*batch)
        return loss * weight, loss.double()[None]

    r = recipe.recipe
    start = time.perf_counter()
    for epoch in range(r.epochs):
        gen = torch.Generator().manual_seed(derive_seed(r.seed, 8, epoch))
        batches = ddp.global_batches(len(data[0]), r.batch_size, gen, rt.ctx.world_size)
        n = len(batches)
        net.train()
        desc = f"{recipe.name} joint epoch {epoch + 1}/{r.epochs}"
        train_epoch(net, optimizer, recipe, data, batches, epoch * n, n * r.epochs, loss_fn, rt, desc)
    net.eval()
    scores = [
        accuracy(lambda xb, t=t: net.logits(xb, t), *task.test.tensors, rt, f"joint: evaluate task {t}")
        for t, task in enumerate(seq)
    ]
    return JointResults(accuracy=scores, seconds=time.perf_counter() - start)
