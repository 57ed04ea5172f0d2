"""The two containers a benchmark returns: a task's data (:class:`TaskData`) and the sequence of tasks.

Every split is an in-memory :class:`torch.utils.data.TensorDataset` of normalized float32 images
(N, C, H, W) and int64 labels 0..k-1, so training can slice ``task.train.tensors`` directly instead
of paying for a DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from hatzoo.errors import TaskError


def to_tensor(
    x: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float], size: int | None = None
) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 ``(x / scale - mean) / std`` per channel; with ``size``, x / scale is
    first brought to size x size (bilinear, clamped to [0, 1]) where it is not already."""
    t = torch.tensor(x, dtype=torch.float32).div_(scale)  # a copy: cached sources are read-only
    if size is not None and t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return t.sub_(m).div_(s)


def pooled_stats(images: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (4 decimals) over every pixel of float images (N, C, H, W) in [0, 1]."""
    total = total_sq = count = 0
    for x in images:
        px = x.transpose(0, 1).flatten(1).double()
        total, total_sq, count = total + px.sum(1), total_sq + (px * px).sum(1), count + px.shape[1]
    mean = total / count
    std = (total_sq / count - mean**2).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def balanced_subset(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k indices of y, drawn without replacement and as class-balanced as the counts allow, sorted."""
    if k >= len(y):
        return np.arange(len(y))
    rank = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rank[idx[rng.permutation(len(idx))]] = np.arange(len(idx))
    order = np.lexsort((y, rank))  # round robin over classes: all rank-0 picks, then rank-1, ...
    return np.sort(order[:k])


@dataclass
class TaskData:
    """One task: its classes (original ids, in label order), their names, and train/test tensors."""

    name: str
    classes: tuple[int, ...]
    labels: list[str]
    train: TensorDataset
    test: TensorDataset
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes (size of the task's head); labels run 0..num_classes-1."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"TaskData({self.name!r}, classes={list(self.classes)}, labels={self.labels}, "
            f"train={len(self.train)}, test={len(self.test)})"
        )


@dataclass
class TaskSequence:
    """An ordered list of tasks sharing one input shape and one normalization."""

    name: str
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tasks: list[TaskData]
    options: dict[str, Any] = field(default_factory=dict)  # what was asked for (seed, order, limits)
    source: str = ""  # where the data came from

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> TaskData:
        if not isinstance(i, int | np.integer) or not -len(self.tasks) <= i < len(self.tasks):
            raise TaskError(f"{self.name} has tasks 0..{len(self.tasks) - 1}; got {i!r}")
        return self.tasks[int(i)]

    def __iter__(self) -> Iterator[TaskData]:
        return iter(self.tasks)

    def __repr__(self) -> str:
        return f"TaskSequence({self.name!r}, tasks={len(self)}, input_shape={self.input_shape})"

    @property
    def num_classes(self) -> list[int]:
        """Classes per task, in task order (the head sizes to create)."""
        return [t.num_classes for t in self.tasks]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalization: back to pixel values in [0, 1] (for plots)."""
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x * s + m

    def describe(self) -> dict[str, Any]:
        """A plain dict (JSON/YAML-ready) of what this sequence is, for logs and model cards."""
        return {
            "name": self.name,
            "source": self.source,
            "input_shape": list(self.input_shape),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "options": dict(self.options),
            "num_tasks": len(self.tasks),
            "tasks": [
                {
                    "name": t.name,
                    "classes": list(t.classes),
                    "labels": list(t.labels),
                    "train": len(t.train),
                    "test": len(t.test),
                    **t.info,
                }
                for t in self.tasks
            ],
            "total": {
                "train": sum(len(t.train) for t in self.tasks),
                "test": sum(len(t.test) for t in self.tasks),
            },
        }
