"""Torch-side preparation for export: the per-sample input shape a task's graph takes.

The unpruned baseline that pruning is measured against is ``model.specialize(t, prune=False)``.
"""

from __future__ import annotations

import math

from hatzoo.core.model import HATModel
from hatzoo.errors import InputError

DEFAULT_IMAGE_SIZE = 224


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
