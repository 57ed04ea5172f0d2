"""Images in, labels out: a model's preprocessing on its own, and the answers ``predict`` gives.

``resolve_data_config(model)`` and ``create_transform(config)`` are timm's two steps for hatzoo models
(timm's own functions work too, through ``model.pretrained_cfg``); this transform also converts the
channels (grayscale / RGB) and takes file paths, PIL images and uint8 arrays (HW, HWC or CHW, numpy or
torch). ``to_batch`` turns one image or many into the normalized float batch a model runs on.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hatzoo.data_config import DataConfig
from hatzoo.errors import InputError

__all__ = [
    "ImageTransform",
    "Prediction",
    "UnnormalizedInputWarning",
    "create_transform",
    "predictions",
    "resolve_data_config",
    "to_batch",
    "warn_if_pixels",
]

_CHANNELS = (1, 3, 4)
_MODES = {1: "L", 3: "RGB"}
_PIXEL_FLAG = "_hatzoo_pixel_warning_given"


class UnnormalizedInputWarning(UserWarning):
    """A float input looks like raw 0-255 pixels: the model expects normalized values."""


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the best ``label`` (class ``index``) with its softmax ``score``, and the
    ``top_k`` (label, score) pairs, best first."""

    label: str
    index: int
    score: float
    top_k: list[tuple[str, float]]


def resolve_data_config(model: Any) -> DataConfig:
    """The data config a model was trained with (its ``data_config``), as a :class:`DataConfig`."""
    data = getattr(model, "data_config", None)
    if isinstance(data, DataConfig):
        return data
    return create_transform(data or {}).config


def create_transform(config: DataConfig | dict[str, Any]) -> ImageTransform:
    """The transform of one image (path, PIL image or uint8 array) into a normalized [C, H, W] tensor."""
    if not config:
        raise InputError(
            "the model has no data config, so images cannot be prepared for it: set model.data_config = "
            "hatzoo.data_config.DataConfig(mean=..., std=..., input_size=(C, H, W)).to_dict(), or pass "
            "normalized float tensors"
        )
    return ImageTransform(config if isinstance(config, DataConfig) else DataConfig.from_dict(config))


class ImageTransform:
    """Channels converted, resized (shorter side to size / crop_pct, centre crop), scaled to [0, 1],
    normalized with the config's mean and std."""

    def __init__(self, config: DataConfig) -> None:
        from PIL import Image

        channels = config.input_size[0]
        if channels not in _MODES:
            raise InputError(f"images can be prepared for 1 or 3 channels, the model takes {channels}")
        self.config = config
        self.mode = _MODES[channels]
        try:
            self.resample = Image.Resampling[config.interpolation.upper()]
        except KeyError:
            raise InputError(f"unknown interpolation {config.interpolation!r} in the data config") from None
        self.mean = torch.tensor(config.mean).view(-1, 1, 1)
        self.std = torch.tensor(config.std).view(-1, 1, 1)

    def __call__(self, image: Any) -> torch.Tensor:
        picture = _as_pil(image).convert(self.mode)
        _, height, width = self.config.input_size
        if picture.size != (width, height):
            scale = max(height, width) / self.config.crop_pct / min(picture.size)
            resized = (
                max(width, math.floor(picture.width * scale)),
                max(height, math.floor(picture.height * scale)),
            )
            picture = picture.resize(resized, self.resample)
            left, top = (picture.width - width) // 2, (picture.height - height) // 2
            picture = picture.crop((left, top, left + width, top + height))
        pixels = np.asarray(picture, dtype=np.float32).reshape(height, width, -1) / 255.0
        return (torch.from_numpy(pixels).permute(2, 0, 1) - self.mean) / self.std

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ImageTransform({self.mode}, size {c.input_size[1:]}, {c.interpolation}, crop_pct {c.crop_pct}, "
            f"mean {list(c.mean)}, std {list(c.std)})"
        )


def to_batch(images: Any, config: DataConfig | dict[str, Any]) -> torch.Tensor:
    """One image or many as a normalized float batch [B, C, H, W].

    A float tensor is taken as already normalized and passes through ([C, H, W] gets a batch axis).
    A uint8 array of 2 dims is one grayscale image; of 3 dims, one image when its first or last axis
    holds 1, 3 or 4 channels (CHW / HWC), else a batch of grayscale images; of 4 dims, a batch.
    """
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        return images.unsqueeze(0) if images.ndim == 3 else images
    transform = create_transform(config)
    return torch.stack([transform(image) for image in _images(images)])


def _images(images: Any) -> list[Any]:
    if isinstance(images, (str, os.PathLike)) or _is_pil(images):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        array = _uint8(images)
        single = array.ndim == 2 or (
            array.ndim == 3 and (array.shape[0] in (1, 3) or array.shape[-1] in _CHANNELS)
        )
        if single:
            return [array]
        if array.ndim in (3, 4):
            return list(array)
        raise InputError(
            f"an image array has 2 to 4 dims (HW, HWC / CHW, or a batch), got shape {array.shape}"
        )
    if isinstance(images, Sequence) and images:
        return list(images)
    raise InputError(
        "predict takes file paths, PIL images, uint8 arrays (HW, HWC or CHW) or a list of them, "
        f"or a normalized float tensor; got {type(images).__name__}"
    )


def _is_pil(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def _uint8(array: np.ndarray | torch.Tensor) -> np.ndarray:
    values = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if values.dtype != np.uint8:
        raise InputError(
            f"image arrays must hold uint8 pixels (0-255), got {values.dtype}; a float tensor is taken as "
            "already normalized with the model's mean and std"
        )
    return values


def _as_pil(image: Any):
    from PIL import Image, UnidentifiedImageError

    if _is_pil(image):
        return image
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                return opened.copy()
        except (OSError, UnidentifiedImageError) as error:
            raise InputError(f"cannot read the image file {os.fspath(image)!r}: {error}") from error
    array = _uint8(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in _CHANNELS:
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in _CHANNELS):
        raise InputError(f"an image is HW, HWC or CHW with 1, 3 or 4 channels, got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(array))


def predictions(logits: torch.Tensor, labels: Sequence[str], top_k: int = 1) -> list[Prediction]:
    """Each row's best classes by softmax score, named by ``labels``."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise InputError(f"top_k must be an int >= 1, got {top_k!r}")
    scores, indices = logits.detach().float().softmax(-1).topk(min(top_k, logits.shape[-1]), dim=-1)
    answers = []
    for row_scores, row_indices in zip(scores.tolist(), indices.tolist(), strict=True):
        ranked = [(labels[i], s) for i, s in zip(row_indices, row_scores, strict=True)]
        answers.append(Prediction(ranked[0][0], row_indices[0], ranked[0][1], ranked))
    return answers


def warn_if_pixels(x: torch.Tensor, owner: object) -> None:
    """Warn once per ``owner`` when a float input is clearly raw 0-255 pixels rather than normalized."""
    if owner.__dict__.get(_PIXEL_FLAG) or not x.is_floating_point() or x.numel() == 0:
        return
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return
    low, high = torch.aminmax(x.detach())
    if low >= 0 and high > 10:
        owner.__dict__[_PIXEL_FLAG] = True
        warnings.warn(
            f"the input's values run from {float(low):g} to {float(high):g}, like raw 0-255 pixels, but the "
            "model expects inputs normalized with its data config's mean and std: use model.predict(images), "
            "or hatzoo.images.to_batch(images, model.data_config)",
            UnnormalizedInputWarning,
            stacklevel=3,
        )
