"""The task ledger: each task's classes and where it is in its life cycle (open, ended, forgotten)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hatzoo.errors import InputError, TaskError

TaskStatus = Literal["open", "ended", "forgotten"]


@dataclass
class TaskInfo:
    """What is known of one task: its classes and where it is in its life cycle."""

    num_classes: int
    labels: list[str]
    status: TaskStatus = "open"

    @classmethod
    def new(cls, num_classes: Any, labels: list[Any] | None = None) -> TaskInfo:
        """A new open task, checked: ``num_classes`` a positive int, one label per class (default 0..n-1)."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise InputError(f"num_classes must be a positive int, got {num_classes!r}")
        labels = [str(i) for i in range(num_classes)] if labels is None else [str(x) for x in labels]
        if len(labels) != num_classes:
            raise InputError(
                f"got {len(labels)} labels for num_classes={num_classes}; give one label per class"
            )
        return cls(num_classes=num_classes, labels=labels)


class TaskList(list[TaskInfo]):
    """The model's tasks in order (a list of ``TaskInfo``), with the questions the life cycle asks of it."""

    def open_task(self) -> int | None:
        """The task being trained, if any."""
        return next((i for i, info in enumerate(self) if info.status == "open"), None)

    def ended(self) -> list[int]:
        return [i for i, info in enumerate(self) if info.status == "ended"]

    def alive(self) -> list[int]:
        return [i for i, info in enumerate(self) if info.status != "forgotten"]

    def check(self, task: Any, allow_open: bool = False) -> None:
        """Raise TaskError unless ``task`` exists, is not forgotten, and (unless allowed) has ended."""
        if not isinstance(task, int) or isinstance(task, bool):
            raise TaskError(f"task must be an int task id, got {task!r}")
        if not 0 <= task < len(self):
            known = f"0..{len(self) - 1}" if self else "none yet; call add_task first"
            raise TaskError(f"task {task} does not exist (tasks: {known})")
        status = self[task].status
        if status == "forgotten":
            raise TaskError(f"task {task} was forgotten; its units may have been reused")
        if status == "open" and not allow_open:
            raise TaskError(f"task {task} is still open; call end_task({task}) first")

    def resolve(self, task: int | None) -> int:
        """``task`` checked, or the only task that is not forgotten when ``task`` is None."""
        if task is None:
            alive = self.alive()
            if len(alive) != 1:
                raise TaskError(f"this model has {len(alive)} tasks: say which one with task=")
            task = alive[0]
        self.check(task, allow_open=True)
        return task
