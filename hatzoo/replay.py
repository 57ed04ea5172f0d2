"""A class-balanced replay buffer: a fixed number of training images kept from the tasks that ended.

HAT needs no replay to remember: its masks and locks keep every ended task bitwise. The buffer serves
answering *without* a task id: each task learns to tell its own inputs from the buffer's images of the
other tasks (``hatzoo.likelihood_ratio``).

The capacity is counted in images and shared evenly by every class seen so far, a class being a (task,
class) pair: with ``n`` classes each keeps ``capacity // n`` images and the first ``capacity % n``
classes one more. A class with fewer training images keeps them all. Each class's images are stored in a
seeded random order, so shrinking a class when a new task arrives keeps a random subset, and the same
seed and data give the same buffer. It is saved as safetensors (never pickle) beside the checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from hatzoo.checkpoint_files import read_tensors, write_tensors
from hatzoo.errors import CheckpointError, InputError

REPLAY_FILE = "replay.safetensors"
_FORMAT = "hatzoo.replay/1"


class ReplayBuffer:
    """``capacity`` training images, class-balanced over every (task, class) added (see the module)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InputError(f"capacity is a number of images >= 1, got {capacity!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"seed must be an int, got {seed!r}")
        self.capacity, self.seed = capacity, seed
        self._classes: list[tuple[int, int]] = []  # (task, class) in the order they were added
        self._rows: dict[tuple[int, int], torch.Tensor] = {}  # every kept image of a class, stored order

    def __len__(self) -> int:
        return sum(len(v) for v in self._rows.values())

    def __repr__(self) -> str:
        return f"ReplayBuffer(capacity={self.capacity}, images={len(self)}, tasks={self.tasks})"

    @property
    def tasks(self) -> list[int]:
        return sorted({t for t, _ in self._classes})

    def add(self, task: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Keep a share of task ``task``'s training data (``x`` [N, ...], ``y`` classes within the task),
        given once, when the task ends; the classes already kept shrink to make room."""
        if task in self.tasks:
            raise InputError(f"task {task} is already in the buffer; add each task once, when it ends")
        if (
            not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor))
            or len(x) != len(y)
            or not len(y)
        ):
            raise InputError("add needs x [N, ...] and y [N] tensors with one label per image, N >= 1")
        kept = next(iter(self._rows.values()), None)  # every class's images share one shape
        if kept is not None and x.shape[1:] != kept.shape[1:]:
            raise InputError(
                f"the buffer holds images of shape {tuple(kept.shape[1:])}, got {tuple(x.shape[1:])}"
            )
        y = y.long().cpu()
        if int(y.min()) < 0:
            raise InputError("labels are class indices within the task, >= 0")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + task)
        order = torch.randperm(len(y), generator=gen)
        x = x.detach().cpu()
        for c in sorted(set(y.tolist())):
            self._classes.append((task, c))
            self._rows[(task, c)] = x[order[y[order] == c]]
        self._rebalance()

    def _rebalance(self) -> None:
        share, extra = divmod(self.capacity, len(self._classes))
        for i, key in enumerate(self._classes):
            self._rows[key] = self._rows[key][: share + (i < extra)]

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self._classes:
            raise InputError("the buffer is empty; add a task's data when the task ends")
        keys = [k for k in self._classes if len(self._rows[k])]
        x = torch.cat([self._rows[k] for k in keys])
        task = torch.cat([torch.full((len(self._rows[k]),), k[0]) for k in keys])
        y = torch.cat([torch.full((len(self._rows[k]),), k[1]) for k in keys])
        return x, task, y

    @property
    def x(self) -> torch.Tensor:
        """Every kept image [N, ...], grouped by class in the order the classes were added."""
        return self._stacked()[0]

    @property
    def task(self) -> torch.Tensor:
        """The task id of each image [N]."""
        return self._stacked()[1]

    @property
    def y(self) -> torch.Tensor:
        """The class within its task of each image [N]."""
        return self._stacked()[2]

    def counts(self) -> dict[tuple[int, int], int]:
        """Images kept per (task, class)."""
        return {k: len(self._rows[k]) for k in self._classes}

    def others(self, task: int) -> torch.Tensor:
        """The images of every task but ``task``: what that task learns to call "not mine"."""
        x, tasks, _ = self._stacked()
        return x[tasks != task]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the buffer as one safetensors file (images, task ids, classes, and how it was built)."""
        x, task, y = self._stacked()
        meta = {"format": _FORMAT, "capacity": str(self.capacity), "seed": str(self.seed)}
        meta["classes"] = json.dumps(self._classes)
        path = Path(path)
        write_tensors(path, {"x": x, "task": task, "y": y}, meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReplayBuffer:
        """The buffer ``save`` wrote (safetensors and JSON only)."""
        meta, tensors = read_tensors(path, "replay buffer")
        if meta.get("format") != _FORMAT or set(tensors) != {"x", "task", "y"}:
            raise CheckpointError(f"{path}: not a hatzoo replay buffer (format {meta.get('format')!r})")
        try:
            buffer = cls(int(meta["capacity"]), int(meta["seed"]))
            classes = [tuple(map(int, k)) for k in json.loads(meta["classes"])]
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"{path}: the replay buffer's metadata is damaged ({error})") from error
        x, task, y = tensors["x"], tensors["task"], tensors["y"]
        if not len(x) == len(task) == len(y) or len(x) > buffer.capacity:
            raise CheckpointError(f"{path}: {len(x)} images for capacity {buffer.capacity}, or ragged rows")
        for key in classes:
            buffer._classes.append(key)
            buffer._rows[key] = x[(task == key[0]) & (y == key[1])]
        if len(buffer) != len(x):
            raise CheckpointError(f"{path}: images of classes the buffer does not list")
        return buffer
