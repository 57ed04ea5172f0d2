"""Plain torch models: an ``nn.Sequential`` of Linear / Conv2d / BatchNorm / activations / pooling.

Each Linear or Conv2d is a mask group, gated after the last activation or norm that follows it
(pooling, Dropout and Flatten keep zeros zero, so they may come after the gate); the next Linear
or Conv2d reads it. The final Linear is
the classifier: it is removed, and every task gets a head of its own in its place.
"""

from __future__ import annotations

from torch import nn

from hatzoo.core.groups import GateSite, MaskGroup, UnitSlice
from hatzoo.errors import UnsupportedModelError
from hatzoo.policies.base import NORM_TYPES, Policy, PolicySpec, norm_modules, unit_rows

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Sigmoid)
PASSIVE = (nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity)
WEIGHTED = (nn.Linear, nn.Conv2d)
HINT = (
    "hatify supports timm ViT and ResNet models and plain nn.Sequential stacks of Linear, Conv2d, "
    "BatchNorm, activations, pooling, Dropout and Flatten. For another architecture, write a policy: "
    "a function returning PolicySpec(groups=...) registered with hatzoo.policies.register_policy."
)


def _is_plain(model: nn.Module) -> bool:
    return isinstance(model, nn.Sequential) and all(
        isinstance(m, WEIGHTED + ACTIVATIONS + PASSIVE + NORM_TYPES + (nn.Flatten,))
        for _, m in _leaves(model)
    )


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not isinstance(m, nn.Sequential)]


def strip_classifier(model: nn.Sequential) -> tuple[nn.Sequential, nn.Linear]:
    """Remove the final Linear (the classifier) from a plain Sequential; returns (trunk, classifier)."""
    last_name, last = _leaves(model)[-1]
    if not isinstance(last, nn.Linear):
        raise UnsupportedModelError(
            f"the last layer of this Sequential is {type(last).__name__}; a plain model must end with its "
            "classifier Linear, which hatify replaces by one head per task"
        )
    model.set_submodule(last_name, nn.Identity())
    return model, last


def plain_spec(model: nn.Module, num_features: int | None = None) -> PolicySpec:
    leaves = _leaves(model)
    weighted = [i for i, (_, m) in enumerate(leaves) if isinstance(m, WEIGHTED)]
    if not weighted:
        raise UnsupportedModelError(f"this Sequential has no Linear or Conv2d layer. {HINT}")
    groups = []
    for k, start in enumerate(weighted):
        end = weighted[k + 1] if k + 1 < len(weighted) else len(leaves)
        producer_name, producer = leaves[start]
        units = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
        between = leaves[start + 1 : end]
        # the gate goes after the last layer that could turn a zero into something else
        active = [n for n, m in between if not isinstance(m, PASSIVE + (nn.Flatten,))]
        # the writer's rows and those of the norms between it and the gate
        owners = [producer_name] + [n for n, m in between if isinstance(m, NORM_TYPES)]
        producers = [s for name in owners for s in unit_rows(model, name)]
        consumers = []
        if end < len(leaves):
            consumer_name, consumer = leaves[end]
            in_size = consumer.in_features if isinstance(consumer, nn.Linear) else consumer.in_channels
            if in_size % units:
                raise UnsupportedModelError(
                    f"{consumer_name} reads {in_size} inputs from {units} units. {HINT}"
                )
            consumers.append(UnitSlice(consumer_name, "weight", 1, expand=in_size // units))
        groups.append(
            MaskGroup(
                name=producer_name,
                size=units,
                gate=GateSite(active[-1] if active else producer_name, "output", dim=1),
                producers=producers,
                consumers=consumers,
            )
        )
    first = leaves[weighted[0]][1]
    flattens_first = any(isinstance(m, nn.Flatten) for _, m in leaves[: weighted[0]])
    if isinstance(first, nn.Linear):
        input_shape = None if flattens_first else (first.in_features,)
    else:
        input_shape = (first.in_channels, None, None)
    return PolicySpec(
        groups=groups,
        per_task_modules=norm_modules(model),
        num_features=num_features or 0,
        input_shape=input_shape,
        input_numel=first.in_features if isinstance(first, nn.Linear) and flattens_first else None,
        feature_group=groups[-1].name if not groups[-1].consumers else None,
    )


PLAIN = Policy("torch-sequential", _is_plain, plain_spec)
