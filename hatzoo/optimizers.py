"""The optimizers a recipe can name, registered with ``@OPTIMIZERS.register``: the recipe's vocabulary,
so it sits beside the card that checks the names; training builds them.

Each builder takes the first parameter group and the recipe's ``TrainSpec``; tasks join later with
``add_param_group``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from hatzoo._registry import Registry

if TYPE_CHECKING:
    from hatzoo.card import TrainSpec

OPTIMIZERS: Registry = Registry("optimizer")


@OPTIMIZERS.register("sgd", "SGD with momentum")
def sgd(params: Iterable[nn.Parameter], r: TrainSpec) -> torch.optim.Optimizer:
    return torch.optim.SGD(list(params), lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)


@OPTIMIZERS.register("adam", "Adam (weight decay added to the gradient)")
def adam(params: Iterable[nn.Parameter], r: TrainSpec) -> torch.optim.Optimizer:
    return torch.optim.Adam(list(params), lr=r.lr, weight_decay=r.weight_decay)


@OPTIMIZERS.register("adamw", "AdamW (decoupled weight decay)")
def adamw(params: Iterable[nn.Parameter], r: TrainSpec) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(params), lr=r.lr, weight_decay=r.weight_decay)
