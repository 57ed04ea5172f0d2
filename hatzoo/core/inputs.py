"""The checks of a HAT model's forward pass: a clear error instead of a shape error deep in torch."""

from __future__ import annotations

from typing import Any

import torch

from hatzoo.core.spec import PolicySpec
from hatzoo.errors import InputError


def check_input(spec: PolicySpec, x: Any) -> None:
    """Raise InputError unless ``x`` is a floating-point batch of the inputs ``spec`` describes."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"input must be a floating-point tensor, got {x.dtype}")
    expected = spec.input_shape
    if expected is None:
        numel = x[0].numel() if x.ndim > 1 else -1
        if numel != spec.input_numel:
            raise InputError(
                f"expected a batch of inputs with {spec.input_numel} values each, got shape {tuple(x.shape)}"
            )
        return
    detail = ""
    if x.ndim == len(expected) + 1:
        for axis, (want, got) in enumerate(zip(expected, x.shape[1:], strict=True), start=1):
            if want is not None and want != got:
                what = "channels" if axis == 1 and len(expected) == 3 else f"size of dim {axis}"
                detail = f": wrong {what} ({got} instead of {want})"
                break
        else:
            return  # the shape fits: the message below is built only for a bad input
    shape = ", ".join("?" if d is None else str(d) for d in expected)
    raise InputError(f"expected input of shape (batch, {shape}), got {tuple(x.shape)}{detail}")


def check_scale(scale: Any) -> None:
    """Raise InputError unless the gate scale is None (binary gates) or a number > 0."""
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise InputError(f"scale must be a number > 0, got {scale!r}")
