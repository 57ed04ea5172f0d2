"""How a model's inputs are prepared: a typed data config, the shape of timm's ``pretrained_cfg``.

Stored in a checkpoint's config.json (``pretrained_cfg``, so ``timm.data.resolve_data_config`` gives
the right transform) and read by the export, which puts ``normalization`` into bundle manifests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hatzoo.errors import InputError


@dataclass(frozen=True)
class DataConfig:
    """Per-channel ``mean`` / ``std`` of the normalization, ``input_size`` (C, H, W), and resizing."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    benchmark: str | None = None

    def __post_init__(self) -> None:
        if len(self.input_size) != 3 or not len(self.mean) == len(self.std) == self.input_size[0]:
            raise InputError(
                f"a data config needs input_size (C, H, W) and C means and stds; got input_size "
                f"{self.input_size}, mean {self.mean}, std {self.std}"
            )
        if any(s <= 0 for s in self.std):
            raise InputError(f"data config std values must be positive, got {self.std}")

    @property
    def normalization(self) -> dict[str, list[float]]:
        """What a bundle manifest records: ``{"mean": [...], "std": [...]}``."""
        return {"mean": list(self.mean), "std": list(self.std)}

    def to_dict(self) -> dict[str, Any]:
        """timm's ``pretrained_cfg`` of this config (:func:`timm_pretrained_cfg`) and the benchmark."""
        fields = {"input_size": [int(v) for v in self.input_size], "mean": self.mean, "std": self.std}
        data = timm_pretrained_cfg(fields | {"interpolation": self.interpolation, "crop_pct": self.crop_pct})
        if self.benchmark is not None:
            data["benchmark"] = self.benchmark
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Read ``to_dict``'s form; the older ``input_shape`` key is read as ``input_size``."""
        size = data.get("input_size", data.get("input_shape"))
        if size is None or "mean" not in data or "std" not in data:
            raise InputError(f"a data config needs input_size, mean and std; got keys {sorted(data)}")
        return cls(
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            input_size=tuple(int(v) for v in size),
            interpolation=data.get("interpolation", "bilinear"),
            crop_pct=float(data.get("crop_pct", 1.0)),
            benchmark=data.get("benchmark"),
        )


def timm_pretrained_cfg(data: Mapping[str, Any], input_shape: Sequence[Any] | None = None) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` for hatzoo's data config ``data`` (possibly partial or empty).

    What ``timm.data.resolve_data_config`` reads: input size, normalization, resize and crop, with
    ``num_classes: 0`` (the heads are per task). The one builder of it: checkpoints' config.json and
    the models' ``pretrained_cfg`` property. ``input_shape`` (the model's own) stands in for a missing
    input size; a size that is not three ints (any height) is left out.
    """
    cfg: dict[str, Any] = {"num_classes": 0}
    shape = data.get("input_size") or data.get("input_shape") or input_shape
    if shape is not None and len(shape) == 3 and all(isinstance(x, int) for x in shape):
        cfg["input_size"] = list(shape)
    if "mean" in data and "std" in data:
        cfg["mean"], cfg["std"] = list(data["mean"]), list(data["std"])
    cfg["interpolation"] = data.get("interpolation", "bilinear")
    cfg["crop_pct"] = data.get("crop_pct", 1.0)
    return cfg
