"""Bake one task into a plain module: masked units physically removed, the task's norms in place.

Pruning is exact where the policy put the gates (after activations, off the residual stream): a
unit whose binary gate is 0 contributes exactly nothing downstream, so removing its producer rows
and consumer columns changes nothing but the float rounding. BatchNorms that follow a conv are
folded into it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from hatzoo.core.gates import apply_gate
from hatzoo.core.groups import GateSite, MaskGroup
from hatzoo.core.task_modules import TaskModule
from hatzoo.data_config import timm_pretrained_cfg
from hatzoo.images import Prediction, predictions, to_batch, warn_if_pixels

if TYPE_CHECKING:
    from hatzoo.core.model import HATModel


class ConstantBranch(nn.Module):
    """A branch whose every unit is masked: its output is its output bias, whatever the input."""

    def __init__(self, bias: torch.Tensor | None, width: int) -> None:
        super().__init__()
        self.register_buffer("bias", bias.detach().clone() if bias is not None else torch.zeros(width))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(x[..., :1]) + self.bias


class TaskModel(nn.Module):
    """One task of a HAT model as an ordinary module: ``logits = net(x)`` on normalized inputs, or
    ``net.predict(images)`` on files, PIL images or uint8 arrays (its data config prepares them)."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Linear,
        labels: list[str],
        task: int,
        kept: dict,
        data_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.labels = list(labels)
        self.task = task
        self.kept_units = kept
        self.data_config = dict(data_config or {})

    @property
    def pretrained_cfg(self) -> dict:
        """The inputs in timm's ``pretrained_cfg`` shape, so ``timm.data.resolve_data_config`` reads them."""
        return timm_pretrained_cfg(self.data_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warn_if_pixels(x, self)
        return self.head(self.backbone(x))

    @torch.no_grad()
    def predict(self, images, top_k: int = 1) -> list[Prediction]:
        """Labels with softmax scores, one :class:`~hatzoo.images.Prediction` per image.

        ``images``: a file path, PIL image or uint8 array (HW, HWC or CHW), a list of them, a uint8
        batch, or a float tensor already normalized; see :func:`hatzoo.images.to_batch`.
        """
        weight = self.head.weight
        x = to_batch(images, self.data_config).to(weight.device, weight.dtype)
        return predictions(self(x), self.labels, top_k)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pruned backbone's features (what the head reads)."""
        return self.backbone(x)


@torch.no_grad()
def specialize(model: HATModel, task: int, *, prune: bool = True, consume: bool = False) -> TaskModel:
    """Task ``task`` of ``model`` as a plain ``TaskModel`` in eval mode.

    ``prune=True`` removes the masked units physically; ``prune=False`` keeps every unit and
    multiplies the task's 0/1 gates in as constants (the unpruned baseline that export measures
    pruning against). ``consume=True`` works on the model's own backbone instead of a copy (the
    loader's fast path for a model it throws away); the HAT model must not be used afterwards.
    """
    model.check_task(task)
    model.enforce_locks()
    backbone = model.backbone if consume else copy.deepcopy(model.backbone)
    strip_hooks(backbone, model.hook_ids())
    select_task(backbone, model, task)
    gates = model.gates(task)
    kept = {}
    for group in model.groups.values():
        keep = model.masks(group.name)[task].cpu()
        kept[group.name] = [int(keep.sum()), group.size]
        if prune:
            _prune_group(backbone, group, keep)
        else:
            site, gate = group.gate, gates[group.name].detach().clone()
            backbone.set_submodule(site.module, Gated(backbone.get_submodule(site.module), gate, site))
    for conv, norm in model.spec.fold_pairs:
        fold_batchnorm(backbone, conv, norm)
    for p in backbone.parameters():
        p.requires_grad_(False)
    head = copy.deepcopy(model.heads[task]).requires_grad_(False)
    if prune and model.spec.feature_group is not None:
        _prune_head(head, model.masks(model.spec.feature_group)[task].cpu(), model.spec.num_features)
    return TaskModel(backbone, head, model.tasks[task].labels, task, kept, model.data_config).eval()


class Gated(nn.Module):
    """Runs ``inner`` with a fixed 0/1 gate multiplied into its output or its input along ``dim``."""

    def __init__(self, inner: nn.Module, gate: torch.Tensor, site: GateSite) -> None:
        super().__init__()
        self.inner, self.dim, self.on_output = inner, site.dim, site.where == "output"
        self.register_buffer("gate", gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.on_output:
            return apply_gate(self.inner(x), self.gate, self.dim)
        return self.inner(apply_gate(x, self.gate, self.dim))


def strip_hooks(module: nn.Module, hook_ids: set[int]) -> None:
    """Remove the forward hooks with these ids (the HAT model's own) from ``module``; others stay."""
    tables = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
    tables += ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")
    for m in module.modules():
        for table in tables:
            hooks = getattr(m, table)
            for key in hook_ids & hooks.keys():
                del hooks[key]


def select_task(backbone: nn.Module, model: HATModel, task: int) -> None:
    """Put the task's own norms and tokens where the wrappers were."""
    for name, module in list(backbone.named_modules()):
        if isinstance(module, TaskModule):
            backbone.set_submodule(name, module.tasks[task])
    # task_params holds one TaskParameter per spec.per_task_params entry, in the same order
    for (host_name, attr), copies in zip(model.spec.per_task_params, model.task_params.values(), strict=True):
        host = backbone.get_submodule(host_name)
        host.__dict__.pop(attr, None)
        host.register_parameter(attr, nn.Parameter(copies.tasks[task].detach().clone()))


def _prune_group(backbone: nn.Module, group: MaskGroup, keep: torch.Tensor) -> None:
    kept = int(keep.sum())
    if kept == 0 and group.collapse is not None:
        branch, bias = group.collapse
        out_layer = backbone.get_submodule(bias.rpartition(".")[0])
        backbone.set_submodule(branch, ConstantBranch(out_layer.bias, out_layer.out_features))
        return
    if kept == 0:
        # no constant form known: keep one unit whose consumers read it with zero weights
        keep = torch.zeros_like(keep)
        keep[0] = True
        for s in group.consumers:
            tensor = getattr(backbone.get_submodule(s.module), s.tensor)
            index = (s.unit_index(group.size) == 0).nonzero().flatten().to(tensor.device)
            tensor.index_fill_(s.dim, index, 0.0)
    for _, s in group.slices():
        module = backbone.get_submodule(s.module)
        tensor = getattr(module, s.tensor)
        entries = s.entry_mask(keep).nonzero().flatten().to(tensor.device)
        pruned = tensor.index_select(s.dim, entries)  # a new tensor: nothing shares the backbone's
        # a Module stores a plain tensor set on a buffer's name as the buffer
        setattr(module, s.tensor, nn.Parameter(pruned, False) if isinstance(tensor, nn.Parameter) else pruned)
        _sync_shape_attributes(module)
    if group.resize is not None:
        group.resize(backbone, int(keep.sum()))


def _prune_head(head: nn.Linear, keep: torch.Tensor, num_features: int) -> None:
    """Drop the head columns that read masked feature units (one unit may span several features)."""
    expand = num_features // keep.numel()
    columns = keep.repeat_interleave(expand).nonzero().flatten()
    if columns.numel() == 0:
        columns = torch.zeros(1, dtype=torch.long)
        head.weight[:, 0] = 0.0
    head.weight = nn.Parameter(head.weight.index_select(1, columns), requires_grad=False)
    head.in_features = head.weight.shape[1]


def _sync_shape_attributes(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.Conv2d):
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = (
            module.running_mean.shape[0] if module.running_mean is not None else module.weight.shape[0]
        )


def fold_batchnorm(backbone: nn.Module, conv_name: str, norm_name: str) -> None:
    """Fold an eval-mode BatchNorm into the conv before it (exact up to float rounding)."""
    conv = backbone.get_submodule(conv_name)
    norm = backbone.get_submodule(norm_name)
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.running_var is None:
        return
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = norm.bias - norm.running_mean * scale
    conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bias)
    conv.bias = nn.Parameter(conv_bias * scale + bias, requires_grad=False)
    backbone.set_submodule(norm_name, nn.Identity())
