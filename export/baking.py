"""Torch-side preparation for export: the per-sample input shape, and the dense masked reference network.

The *dense masked* network is one task of a HAT model as plain modules with nothing removed: the task's
norms and tokens in place, BatchNorms folded, and every gate a constant 0/1 multiplication. It computes
what ``model.eval()(x, task=t)`` computes, so its ONNX graph is the baseline that pruning is measured
against (same work as serving the HAT model unpruned).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from hatzoo.core.gates import apply_gate
from hatzoo.core.model import HATModel
from hatzoo.core.specialize import fold_batchnorm, select_task, strip_hooks
from hatzoo.errors import InputError

DEFAULT_IMAGE_SIZE = 224


class GatedOutput(nn.Module):
    """Runs ``inner`` and multiplies its output by a fixed 0/1 gate along ``dim``."""

    def __init__(self, inner: nn.Module, gate: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.inner = inner
        self.dim = dim
        self.register_buffer("gate", gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_gate(self.inner(x), self.gate, self.dim)


class GatedInput(nn.Module):
    """Multiplies the input by a fixed 0/1 gate along ``dim``, then runs ``inner``."""

    def __init__(self, inner: nn.Module, gate: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.inner = inner
        self.dim = dim
        self.register_buffer("gate", gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(apply_gate(x, self.gate, self.dim))


class DenseTaskModel(nn.Module):
    """One task of a HAT model, unpruned, with its binary masks multiplied in: ``logits = net(x)``."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, task: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@torch.no_grad()
def dense_masked(model: HATModel, task: int) -> DenseTaskModel:
    """Task ``task`` as an unpruned module computing the HAT model's eval output (the export baseline)."""
    model._check_task(task)
    backbone = copy.deepcopy(model.backbone)
    strip_hooks(backbone)
    select_task(backbone, model, task)
    gates = model.gates(task)
    for group in model.groups.values():
        site = group.gate
        parent, _, child = site.module.rpartition(".")
        host = backbone.get_submodule(parent) if parent else backbone
        wrap = GatedOutput if site.where == "output" else GatedInput
        gate = gates[group.name].detach().clone()
        setattr(host, child, wrap(getattr(host, child), gate, site.dim))
    for conv, norm in model.spec.fold_pairs:
        fold_batchnorm(backbone, conv, norm)
    for p in backbone.parameters():
        p.requires_grad_(False)
    head = copy.deepcopy(model.heads[task]).requires_grad_(False)
    return DenseTaskModel(backbone, head, task).eval()


def sample_shape(
    model: HATModel,
    image_size: int | tuple[int, int] | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[tuple[int, ...], bool]:
    """Per-sample input shape for export and whether a default filled a free size; InputError if it clashes.

    A fixed shape from the policy (ViT) wins; free H, W (ResNet, conv Sequential) come from ``image_size``,
    else from the backbone's timm config, else 224. A Flatten-first MLP takes ``input_shape`` or a flat
    vector of its ``input_numel`` values.
    """
    spec = model.spec
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        _check_against_spec(model, shape)
        return shape, False
    if spec.input_shape is None:
        return (int(spec.input_numel),), False
    if all(d is not None for d in spec.input_shape):
        if image_size is not None and tuple(spec.input_shape[1:]) != _pair(image_size):
            raise InputError(
                f"this model takes fixed {spec.input_shape[1:]} inputs; image_size={image_size} does not "
                "match (leave it out)"
            )
        return tuple(int(d) for d in spec.input_shape), False
    defaulted = image_size is None
    if defaulted:
        cfg = getattr(model.backbone, "pretrained_cfg", None) or {}
        size = cfg.get("input_size")
        image_size = tuple(size[-2:]) if size else DEFAULT_IMAGE_SIZE
    h, w = _pair(image_size)
    shape = (int(spec.input_shape[0]), h, w)
    return shape, defaulted


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise InputError(f"image_size must be positive, got {size}")
    return h, w


def _check_against_spec(model: HATModel, shape: tuple[int, ...]) -> None:
    """InputError when an explicit input_shape cannot feed the model."""
    spec = model.spec
    if spec.input_shape is None:
        if math.prod(shape) != spec.input_numel:
            raise InputError(
                f"input_shape {shape} has {math.prod(shape)} values; the model reads {spec.input_numel}"
            )
        return
    if len(shape) != len(spec.input_shape) or any(
        want is not None and want != got for want, got in zip(spec.input_shape, shape, strict=False)
    ):
        raise InputError(f"input_shape {shape} does not fit the model's input {spec.input_shape}")
