"""Architecture policies: which units of a model are masked, and which parts are per task."""

from __future__ import annotations

from torch import nn

from hatzoo.errors import UnsupportedModelError
from hatzoo.policies.base import Policy, PolicySpec
from hatzoo.policies.plain import HINT, PLAIN
from hatzoo.policies.resnet import RESNET
from hatzoo.policies.vit import VIT

_POLICIES: list[Policy] = [VIT, RESNET, PLAIN]

__all__ = ["Policy", "PolicySpec", "find_policy", "register_policy"]


def register_policy(policy: Policy) -> None:
    """Add a policy; it is tried before the built-in ones."""
    _POLICIES.insert(0, policy)


def find_policy(model: nn.Module) -> Policy:
    """The first policy that matches ``model``, or an error that says how to write one."""
    for policy in _POLICIES:
        if policy.matches(model):
            return policy
    raise UnsupportedModelError(f"no HAT policy for {type(model).__name__}. {HINT}")
