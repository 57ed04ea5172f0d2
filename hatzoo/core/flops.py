"""Multiply-add counts of a network for one input size, so a pruned task graph can say what it saved.

Counted analytically from the shapes each layer sees in one batch-1 forward pass (forward hooks, no
timing): ``nn.Linear`` (in x out per row), ``nn.Conv2d`` (out elements x in_channels/groups x kernel
area) and the two attention matmuls of a timm ``Attention`` (q k^T and attn v: 2 x N^2 x heads x
head_dim). Norms, activations, softmax, pooling and additions are left out: they are a few percent
of a ViT or ResNet and scale with the same widths. A ``ConstantBranch`` costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """Multiply-adds of one call of a Linear, Conv2d or timm Attention module."""
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    x = inputs[0]  # timm Attention: x [B, N, C]; qkv and proj are Linears counted on their own
    batch, tokens = x.shape[0], x.shape[1]
    return 2 * batch * tokens * tokens * module.num_heads * module.head_dim


@torch.no_grad()
def count_macs(root: nn.Module, run: Callable[[], object]) -> int:
    """Multiply-adds of every Linear / Conv2d / timm Attention under ``root`` during ``run()``."""
    from timm.layers import Attention  # timm is a core dependency; the ViT policies need it anyway

    kinds = (nn.Linear, nn.Conv2d, Attention)
    total = [0]

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        total[0] += _layer_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in root.modules() if isinstance(m, kinds)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def task_macs(model: nn.Module, task: int, net: nn.Module, sample_shape: tuple[int, ...]) -> tuple[int, int]:
    """(pruned, dense) multiply-adds of one sample: ``net`` (the task graph) and the unpruned HAT model."""
    x = torch.zeros(1, *sample_shape)
    dense = count_macs(model, lambda: model(_like(x, model), task=task))
    pruned = count_macs(net, lambda: net(_like(x, net)))
    return pruned, dense


def _like(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``x`` on the device and in the floating dtype of a module's first parameter."""
    param = next(module.parameters(), None)
    return x if param is None else x.to(param.device, param.dtype)
