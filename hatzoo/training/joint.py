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
from tqdm.auto import tqdm

from hatzoo.core.arch import build_backbone
from hatzoo.core.model import HATModel
from hatzoo.data import TaskSequence
from hatzoo.policies.plain import strip_classifier
from hatzoo.training import ddp
from hatzoo.training.common import (
    ModelFactory,
    build_model,
    derive_seed,
    load_benchmark,
    lr_factor,
    make_optimizer,
    set_lr_factor,
)
from hatzoo.training.metrics import count_correct
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
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> JointResults:
    """Train the joint upper bound for ``recipe`` and return its per-task test accuracies."""
    ctx = ddp.init_distributed()
    device = torch.device(device)
    seq = seq if seq is not None else load_benchmark(recipe)
    template = build_model(recipe, model_factory)
    torch.manual_seed(derive_seed(recipe.recipe.seed, 7))
    net = JointNet(plain_backbone(template), template.spec.num_features, seq.num_classes).to(device)
    del template
    xs, ys, ts = [], [], []
    for t, task in enumerate(seq):
        x, y = task.train.tensors
        xs.append(x)
        ys.append(y)
        ts.append(torch.full((len(y),), t, dtype=torch.long))
    x_all, y_all, t_all = torch.cat(xs), torch.cat(ys), torch.cat(ts)
    optimizer = make_optimizer(recipe, net.parameters())
    trainer = ddp.wrap(net, ctx, device)
    r = recipe.recipe
    start = time.perf_counter()
    step = 0
    for epoch in range(r.epochs):
        gen = torch.Generator().manual_seed(derive_seed(r.seed, 8, epoch))
        batches = ddp.global_batches(len(y_all), r.batch_size, gen, ctx.world_size)
        total = len(batches) * r.epochs
        net.train()
        bar = tqdm(
            batches,
            desc=f"{recipe.name} joint epoch {epoch + 1}/{r.epochs}",
            disable=not (progress and ctx.is_main),
            dynamic_ncols=True,
        )
        for idx in bar:
            set_lr_factor(optimizer, lr_factor(recipe, step, total))
            step += 1
            local = ddp.shard(idx, ctx)
            loss = trainer(x_all[local].to(device), y_all[local].to(device), t_all[local].to(device))
            loss = loss * (ctx.world_size / len(idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if r.clip_grad is not None:
                nn.utils.clip_grad_norm_(net.parameters(), r.clip_grad)
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item() / ctx.world_size:.4f}", refresh=False)
    net.eval()
    accuracy = []
    for t, task in enumerate(seq):
        x, y = task.test.tensors
        rows = ddp.shard(torch.arange(len(y)), ctx)
        correct = count_correct(lambda xb, t=t: net.logits(xb, t), x[rows], y[rows], 512, device)
        correct, total = ctx.all_sum([correct, len(rows)])
        accuracy.append(correct / total)
    return JointResults(accuracy=accuracy, seconds=time.perf_counter() - start)
