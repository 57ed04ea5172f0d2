"""Continual-learning results: the accuracy matrix and what is computed from it (ACC, BWT), capacity.

``accuracy[i][j]`` is the test accuracy on task j after training task i, for j <= i; entries with
j > i are ``None``. Forward transfer (Lopez-Paz & Ranzato 2017: R[i-1][i] minus a random-init
baseline) needs the accuracy on task i *before* it is trained; a HAT model has no head, gates or
norms for a task before ``add_task``, so those entries do not exist and FWT is reported as not
defined (``fwt = None`` with ``fwt_reason``), never filled with a made-up number.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hatzoo.errors import CheckpointError

FWT_REASON = (
    "not defined for HAT: FWT needs the accuracy on task i before training it (R[i-1][i]), but a HAT "
    "task has no head, gates or norms until add_task(i), so that entry cannot be measured"
)


@dataclass
class Results:
    """Everything one ``train_sequence`` run measured, JSON-ready."""

    name: str
    benchmark: dict[str, Any]
    tasks: list[dict[str, Any]]  # per task: name, labels, train and test sizes
    accuracy: list[list[float | None]]  # T x T, None where j > i
    capacity: list[dict[str, dict[str, Any]]]  # model.capacity() after each task
    seconds: list[float]  # training time per task
    recipe: dict[str, Any]
    joint: list[float] | None = None  # per-task accuracy of the joint (non-continual) upper bound
    joint_seconds: float | None = None
    complete: bool = True

    @property
    def num_trained(self) -> int:
        """How many tasks have been trained (rows of the matrix)."""
        return len(self.accuracy)

    @property
    def final(self) -> list[float]:
        """The last row: accuracy on every task after the last one trained."""
        return [float(v) for v in self.accuracy[-1]] if self.accuracy else []

    @property
    def average_accuracy(self) -> float | None:
        """ACC: mean of the last row of the accuracy matrix."""
        row = self.final
        return sum(row) / len(row) if row else None

    @property
    def bwt(self) -> float | None:
        """BWT: mean over j < T-1 of R[T-1][j] - R[j][j]; exactly 0.0 when nothing was forgotten."""
        return backward_transfer(self.accuracy)

    @property
    def fwt(self) -> float | None:
        """Forward transfer: not defined for HAT (see ``FWT_REASON``)."""
        return None

    @property
    def joint_average(self) -> float | None:
        return sum(self.joint) / len(self.joint) if self.joint else None

    @property
    def gap_to_joint(self) -> float | None:
        """How far the joint upper bound's average accuracy is above ACC (None without both)."""
        if self.joint_average is None or self.average_accuracy is None:
            return None
        return self.joint_average - self.average_accuracy

    def capacity_used(self) -> list[dict[str, float]]:
        """Fraction of each group's units used by any ended task, after each task."""
        return [{g: (c["size"] - c["free"]) / c["size"] for g, c in cap.items()} for cap in self.capacity]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"] = {
            "average_accuracy": self.average_accuracy,
            "bwt": self.bwt,
            "fwt": None,
            "fwt_reason": FWT_REASON,
            "joint_average_accuracy": self.joint_average,
            "gap_to_joint": self.gap_to_joint,
        }
        return data

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Results:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"cannot read results file {path}: {err}") from err
        data.pop("metrics", None)
        data.pop("extra", None)  # an always-empty field of results written by earlier versions
        return cls(**data)


def backward_transfer(matrix: list[list[float | None]]) -> float | None:
    """BWT from an accuracy matrix (None with fewer than two tasks)."""
    last = len(matrix) - 1
    if last < 1:
        return None
    diffs = [matrix[last][j] - matrix[j][j] for j in range(last)]
    return sum(diffs) / len(diffs)


def jsonable_capacity(capacity: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``model.capacity()`` with string task keys (what JSON stores)."""
    return {
        g: {"size": c["size"], "used": {str(t): n for t, n in c["used"].items()}, "free": c["free"]}
        for g, c in capacity.items()
    }
