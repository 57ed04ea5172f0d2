"""Mask-scale schedules: the gate scale s grows from 1/smax to smax within each epoch.

The paper (Serra et al. 2018) anneals s linearly over the batches of every epoch, so the gates are
soft early in the epoch (gradients flow to all embeddings) and nearly binary at its end.
Call ``schedule(batch, num_batches)`` to get s for a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hatzoo._registry import Registry
from hatzoo.errors import InputError

SCHEDULES: Registry[type[ScaleSchedule]] = Registry("mask-scale schedule")


@dataclass(frozen=True)
class ScaleSchedule:
    """Base: maps progress in [0, 1] through an epoch to a scale in [1/smax, smax]."""

    smax: float = 400.0

    def __post_init__(self) -> None:
        if self.smax < 1:
            raise InputError(f"smax must be >= 1 for a schedule, got {self.smax}")

    def __call__(self, batch: int, num_batches: int) -> float:
        if num_batches < 1 or not 0 <= batch < num_batches:
            raise InputError(
                f"batch must be in [0, num_batches), got batch={batch}, num_batches={num_batches}"
            )
        progress = batch / (num_batches - 1) if num_batches > 1 else 1.0
        return self.at(progress)

    def at(self, progress: float) -> float:
        raise NotImplementedError


@SCHEDULES.register("linear")
class LinearScale(ScaleSchedule):
    """The paper's schedule: s = 1/smax + (smax - 1/smax) * progress."""

    def at(self, progress: float) -> float:
        low = 1.0 / self.smax
        return low + (self.smax - low) * progress


@SCHEDULES.register("exponential")
class ExponentialScale(ScaleSchedule):
    """Geometric growth from 1/smax to smax: equal time at every order of magnitude."""

    def at(self, progress: float) -> float:
        return self.smax ** (2.0 * progress - 1.0)


@SCHEDULES.register("cosine")
class CosineScale(ScaleSchedule):
    """Half-cosine ramp from 1/smax to smax: slow at both ends."""

    def at(self, progress: float) -> float:
        low = 1.0 / self.smax
        return low + (self.smax - low) * (1.0 - math.cos(math.pi * progress)) / 2.0


@SCHEDULES.register("constant")
class ConstantScale(ScaleSchedule):
    """Always smax: hard-ish gates from the first batch (useful for fine-tuning a reopened task)."""

    def at(self, progress: float) -> float:
        return self.smax


def get_schedule(name: str, smax: float = 400.0) -> ScaleSchedule:
    """Build a schedule by name (linear, exponential, cosine, constant)."""
    return SCHEDULES.get(name)(smax=smax)
