"""Answering without a task id: every task scores how strongly it claims an input, the highest score wins.

Torch-free (numpy only), so the serving routes and ``hatzoo.task_inference`` share one implementation
and choose the same task. With ``z`` one task's logits for one input, ``C`` its class count, ``T`` its
temperature (1 unless fitted) and ``p = softmax(z / T)``, the rules are:

- ``msp``:     score = max_c p_c                        (maximum softmax probability)
- ``entropy``: score = sum_c p_c log p_c / log C        (negative entropy in [-1, 0], comparable across C)
- ``energy``:  score = T logsumexp(z / T)               (negative free energy; the default)

The inferred task is the arg-max of the scores (the first task on a tie); the label is that task's
arg-max class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hatzoo._registry import Registry
from hatzoo.errors import InputError

Rule = Callable[[np.ndarray, float], np.ndarray]
RULES: Registry[Rule] = Registry("task-inference rule")
DEFAULT_RULE = "energy"
LIKELIHOOD_RATIO = "likelihood_ratio"  # scores computed by each task's head (hatzoo.likelihood_ratio)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@RULES.register("msp", "maximum softmax probability")
def msp(logits: np.ndarray, temperature: float) -> np.ndarray:
    return np.exp(_log_softmax(logits / temperature).max(axis=1))


@RULES.register("entropy", "negative softmax entropy divided by log(number of classes)")
def negative_entropy(logits: np.ndarray, temperature: float) -> np.ndarray:
    if logits.shape[1] == 1:  # one class: a certain answer
        return np.zeros(len(logits))
    log_p = _log_softmax(logits / temperature)
    return (np.exp(log_p) * log_p).sum(axis=1) / np.log(logits.shape[1])


@RULES.register("energy", "logsumexp of the logits (negative free energy)")
def energy(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    top = z.max(axis=1)
    return temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def task_scores(
    logits: Sequence[np.ndarray], rule: str = DEFAULT_RULE, temperatures: Sequence[float] | None = None
) -> np.ndarray:
    """Scores [B, T] (float64, higher = more likely) of each task's logits [B, C_t] under ``rule``."""
    score = RULES.get(rule)
    if not logits:
        raise InputError("task inference needs at least one task's logits")
    temps = [1.0] * len(logits) if temperatures is None else [float(t) for t in temperatures]
    if len(temps) != len(logits):
        raise InputError(f"got {len(temps)} temperatures for {len(logits)} tasks; give one per task")
    if not all(np.isfinite(t) and t > 0 for t in temps):
        raise InputError(f"temperatures must be finite numbers > 0, got {temps}")
    rows = {len(z) for z in logits}
    if len(rows) != 1 or any(np.ndim(z) != 2 for z in logits):
        raise InputError(
            f"every task's logits must be [B, C] with one B, got {[np.shape(z) for z in logits]}"
        )
    return np.stack([score(np.asarray(z, np.float64), t) for z, t in zip(logits, temps, strict=True)], axis=1)


def choose(scores: np.ndarray) -> np.ndarray:
    """The column of the best task in each row of scores [B, T] (the first one on a tie)."""
    return scores.argmax(axis=1)


def answer(
    task_ids: Sequence[str],
    labels: Mapping[str, Sequence[str]],
    logits: Sequence[np.ndarray],
    rule: str = DEFAULT_RULE,
    claims: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """The serving answer per row: inferred task, its label and class index, and every task's score.

    With ``rule`` ``likelihood_ratio`` the scores are ``claims``, each task's own score [B] (its graph's
    second output); the other rules compute them from the logits.
    """
    if rule == LIKELIHOOD_RATIO:
        if claims is None or len(claims) != len(logits):
            raise InputError(f"rule {LIKELIHOOD_RATIO!r} needs every task's score output")
        scores = np.stack([np.asarray(c, np.float64).reshape(-1) for c in claims], axis=1)
    else:
        scores = task_scores(logits, rule)
    best = choose(scores)
    tasks = [task_ids[c] for c in best]
    classes = [int(logits[c][i].argmax()) for i, c in enumerate(best)]
    return {
        "rule": rule,
        "tasks": list(task_ids),
        "task": tasks,
        "class_index": classes,
        "label": [labels[t][k] for t, k in zip(tasks, classes, strict=True)],
        "scores": scores.tolist(),
    }
