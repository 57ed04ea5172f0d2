"""The serving side of answering without a task id: which tasks of a bundle answer together.

The rules themselves (``RULES``, ``task_scores``, ``answer``) are the library's, in ``hatzoo.task_rules``.
"""

from __future__ import annotations

from collections.abc import Sequence

from hatzoo.errors import InputError
from hatzoo.task_rules import DEFAULT_RULE, LIKELIHOOD_RATIO, RULES, answer, choose, task_scores

from .bundle import Bundle, TaskSpec

__all__ = [
    "DEFAULT_RULE",
    "LIKELIHOOD_RATIO",
    "RULES",
    "answer",
    "answering_specs",
    "check_rule",
    "choose",
    "default_rule",
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


def default_rule(bundle: Bundle) -> str:
    """The rule a bundle answers with when the request names none: its tasks' likelihood-ratio scores
    when its graphs give them (what ``load(..., task="auto").predict`` answers), else ``energy``."""
    return LIKELIHOOD_RATIO if bundle.scored else DEFAULT_RULE


def check_rule(rule: str, bundle: Bundle) -> str:
    """``rule`` when ``bundle`` can answer by it; an InputError listing the ones it can otherwise."""
    known = [*RULES, *([LIKELIHOOD_RATIO] if bundle.scored else [])]
    if rule not in known:
        extra = "" if bundle.scored else f" ({LIKELIHOOD_RATIO} needs graphs exported with ratio_heads)"
        raise InputError(f"unknown task-inference rule {rule!r}; choose one of {', '.join(known)}{extra}")
    return rule
