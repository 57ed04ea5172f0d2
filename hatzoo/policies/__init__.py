"""Architecture policies: which units of a model are masked, and which parts are per task."""

from __future__ import annotations

from torch import nn

from hatzoo._registry import Registry
from hatzoo.errors import UnsupportedModelError
from hatzoo.policies.base import Policy, PolicySpec
from hatzoo.policies.plain import HINT, PLAIN
from hatzoo.policies.resnet import RESNET
from hatzoo.policies.vit import VIT

__all__ = ["POLICIES", "Policy", "PolicySpec", "find_policy", "register_policy"]

POLICIES: Registry[Policy] = Registry("architecture policy")  # tried in order
for _builtin in (VIT, RESNET, PLAIN):
    POLICIES.register(_builtin.name)(_builtin)


def register_policy(policy: Policy) -> Policy:
    """Add a policy; it is tried before the ones registered so far."""
    return POLICIES.register(policy.name, first=True)(policy)


def find_policy(model: nn.Module) -> Policy:
    """The first policy that matches ``model``, or an error that says how to write one."""
    for policy in POLICIES.values():
        if policy.matches(model):
            return policy
    raise UnsupportedModelError(f"no HAT policy for {type(model).__name__}. {HINT}")
