"""HAT hyper-parameters, with the defaults of Serra et al. (2018)."""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from hatzoo.errors import InputError

MaskInit = Literal["budget", "normal", "dense", "sparse"]
RegMode = Literal["global", "per_layer"]


@dataclass
class HATConfig:
    """Options of the HAT mechanism.

    smax: the largest gate scale; binary masks are the limit of sigmoid(smax * e).
    reg_c: strength of the mask regularizer (paper: 0.75).
    reg_mode: "global" is the paper's ratio over all units; "per_layer" averages the ratio of
        each mask group, so small groups (attention heads) weigh as much as wide MLPs.
    mask_init: "budget" (default) starts a new task's gates from N(0, 1) on the units earlier tasks
        use (about half reused, at no cost: their weights are locked) and opens only about
        ``task_budget`` of each group among the free units (the rest start closed), so room lasts
        for many tasks; the paper's "normal" (N(0, 1) everywhere) takes half of what is free per
        task, since with a short run gates keep the sign they start with, and leaves a ViT full
        after about ten tasks. "dense" starts every gate open (e = +1, HAT-CL's choice that lets a
        new task see all units first); "sparse" starts them closed (e = -1).
    task_budget: with ``mask_init="budget"``, the share of each group's units a new task starts
        with among the free ones (in (0, 1]); a group narrower than 1024 units gives what a 1024-unit
        one would (at most half of what is free), so narrow layers are not starved. A group of
        1024 units or more lasts about 1 / task_budget tasks, a narrower one about
        size / (1024 * task_budget) (768-unit ViT-Tiny MLPs: 24 tasks at the default 1/32).
    clamp: embeddings are clamped to [-clamp, clamp] after every optimizer step (paper: 6).
    cosh_clamp: the argument of cosh in the gradient compensation is clamped (paper: 50).
    norm_init: a new task's norms and tokens start as a copy of the latest task's ("copy") or
        from the backbone's initial values ("fresh").
    """

    smax: float = 400.0
    reg_c: float = 0.75
    reg_mode: RegMode = "global"
    mask_init: MaskInit = "budget"
    task_budget: float = 1 / 32
    clamp: float = 6.0
    cosh_clamp: float = 50.0
    norm_init: Literal["copy", "fresh"] = "copy"

    def __post_init__(self) -> None:
        if self.smax <= 0:
            raise InputError(f"smax must be > 0, got {self.smax}")
        if self.reg_c < 0:
            raise InputError(f"reg_c must be >= 0, got {self.reg_c}")
        if not 0 < self.task_budget <= 1:
            raise InputError(f"task_budget must be in (0, 1], got {self.task_budget}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """The options; ``task_budget`` only where it acts (``mask_init="budget"``), so a checkpoint with
        another start is written as it was before the option existed (a loaded release saves its bytes)."""
        options = asdict(self)
        if self.mask_init != "budget":
            del options["task_budget"]
        return options

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HATConfig:
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise InputError(f"unknown HAT option(s) {unknown}; known options are {sorted(known)}")
        return cls(**data)


# the options whose values are a fixed set (their Literal types), as read by __post_init__ and the
# checkpoint schema
CHOICES: dict[str, tuple[str, ...]] = {
    name: typing.get_args(kind)
    for name, kind in typing.get_type_hints(HATConfig).items()
    if typing.get_origin(kind) is Literal
}
