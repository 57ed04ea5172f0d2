"""timm ResNets: the channels inside each residual block (after BN and ReLU) are mask groups.

The residual stream (stem, conv2/conv3 outputs, downsample) is not masked: shortcuts add its
values back, so masking it could not be pruned exactly; its BatchNorms are per task instead.
"""

from __future__ import annotations

from torch import nn

from hatzoo.core.groups import GateSite, MaskGroup, UnitSlice
from hatzoo.errors import UnsupportedModelError
from hatzoo.policies.base import Policy, PolicySpec, norm_modules, unit_rows


def _is_resnet(model: nn.Module) -> bool:
    from timm.models.resnet import ResNet

    return isinstance(model, ResNet)


def resnet_spec(model: nn.Module) -> PolicySpec:
    from timm.models.resnet import BasicBlock, Bottleneck

    groups, folds = [], [("conv1", "bn1")]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, stage)):
            name = f"{stage}.{i}"
            if isinstance(block, BasicBlock):
                convs = 2
            elif isinstance(block, Bottleneck):
                convs = 3
            else:
                raise UnsupportedModelError(
                    f"{name} is a {type(block).__name__}; "
                    "the ResNet policy supports timm BasicBlock and Bottleneck"
                )
            for k in range(1, convs):
                conv = getattr(block, f"conv{k}")
                if conv.groups != 1 or not isinstance(getattr(block, f"bn{k}"), nn.BatchNorm2d):
                    raise UnsupportedModelError(
                        f"{name}.conv{k} is grouped or not followed by BatchNorm2d; use a plain timm ResNet"
                    )
                groups.append(
                    MaskGroup(
                        name=f"{name}.conv{k}",
                        size=conv.out_channels,
                        gate=GateSite(f"{name}.act{k}", "output", dim=1),
                        producers=unit_rows(model, f"{name}.conv{k}") + unit_rows(model, f"{name}.bn{k}"),
                        consumers=[UnitSlice(f"{name}.conv{k + 1}", "weight", 1)],
                    )
                )
            folds += [(f"{name}.conv{k}", f"{name}.bn{k}") for k in range(1, convs + 1)]
            if block.downsample is not None and isinstance(block.downsample, nn.Sequential):
                folds.append((f"{name}.downsample.0", f"{name}.downsample.1"))
    stem = model.conv1 if isinstance(model.conv1, nn.Conv2d) else model.conv1[0]
    return PolicySpec(
        groups=groups,
        per_task_modules=norm_modules(model),
        num_features=model.num_features,
        input_shape=(stem.in_channels, None, None),
        fold_pairs=[(c, b) for c, b in folds if isinstance(model.get_submodule(c), nn.Conv2d)],
    )


RESNET = Policy("timm-resnet", _is_resnet, resnet_spec)
