"""The serving side of answering without a task id: which tasks of a bundle answer together.

The rules themselves (``RULES``, ``task_scores``, ``answer``) are the library's, in ``hatzoo.task_rules``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hatzoo.errors import InputError
from hatzoo.task_rules import DEFAULT_RULE, RULES, answer, choose, task_scores

from .bundle import Bundle, TaskSpec

__all__ = [
    "DEFAULT_RULE",
    "RULES",
    "answer",
    "answering_specs",
    "check_rule",
    "choose",
    "normalization_groups",
    "task_scores",
]


def answering_specs(bundle: Bundle) -> list[TaskSpec]:
    """Every task of a bundle, which must all take the same input to be answered together."""
    specs = list(bundle.tasks.values())
    shapes = {(s.input_shape[1:], s.dtype) for s in specs}
    if len(shapes) != 1:
        raise InputError(
            f"the tasks of model {bundle.model!r} take different inputs {sorted(map(str, shapes))}; "
            "name the task: /v1/models/{model}/tasks/{task}:predict",
        )
    return specs


def normalization_groups(specs: Sequence[TaskSpec]) -> list[list[TaskSpec]]:
    """Tasks grouped by their input normalization (pixels are normalized once per group)."""
    groups: dict[tuple[tuple[float, ...], tuple[float, ...]], list[TaskSpec]] = {}
    for s in specs:
        groups.setdefault((s.mean, s.std), []).append(s)
    return list(groups.values())


def check_rule(rule: str) -> str:
    """``rule`` when it is a known rule; an InputError listing the known ones otherwise."""
    if rule not in RULES:
        raise InputError(f"unknown task-inference rule {rule!r}; choose one of {', '.join(RULES)}")
    return rule
