"""``hatify``: turn a supported timm or torch model into a HAT model in one call."""

from __future__ import annotations

from typing import Any

from torch import nn

from hatzoo.core.arch import describe_arch
from hatzoo.core.config import HATConfig
from hatzoo.core.model import HATModel
from hatzoo.core.spec import PolicySpec
from hatzoo.errors import InputError, UnsupportedModelError
from hatzoo.policies import find_policy
from hatzoo.policies.plain import PLAIN, plain_spec, strip_classifier


def hatify(
    model: nn.Module,
    config: HATConfig | None = None,
    *,
    arch: dict[str, Any] | None = None,
    model_class: type[HATModel] = HATModel,
    **options: Any,
) -> HATModel:
    """Wrap ``model`` as a HAT model; its classifier is replaced by one head per task.

    ``options`` are HATConfig fields (smax, reg_c, reg_mode, mask_init, ...). ``arch`` describes
    how to rebuild the backbone for checkpoints; it is inferred when not given. ``model_class`` is
    the class built: ``hatzoo.HATModel`` adds saving, loading, pushing and prediction to the core's.
    """
    if isinstance(model, HATModel):
        raise InputError("this model is already a HAT model")
    if not isinstance(model, nn.Module):
        raise InputError(f"hatify expects a torch.nn.Module, got {type(model).__name__}")
    if config is not None and options:
        raise InputError("pass either a HATConfig or keyword options, not both")
    config = config or HATConfig.from_dict(options)
    policy = find_policy(model)
    arch = arch or describe_arch(model)
    if policy is PLAIN:
        model, classifier = strip_classifier(model)
        spec = plain_spec(model, num_features=classifier.in_features)
    else:
        if getattr(model, "num_classes", 0):
            model.reset_classifier(0)
        spec = policy.build(model)
    spec.arch = arch
    _validate(model, spec)
    return model_class(model, spec, config)


def _validate(model: nn.Module, spec: PolicySpec) -> None:
    """Every slice must fit its tensor: a policy bug must fail here, not as a wrong lock later."""
    for g in spec.groups:
        for _, s in g.slices():
            tensor = getattr(model.get_submodule(s.module), s.tensor, None)
            if tensor is None:
                raise UnsupportedModelError(f"group {g.name}: {s.module}.{s.tensor} does not exist")
            if tensor.shape[s.dim] != g.size * s.expand * s.repeat:
                raise UnsupportedModelError(
                    f"group {g.name}: {s.module}.{s.tensor} has {tensor.shape[s.dim]} on dim {s.dim}; "
                    f"expected {g.size} units x {s.expand} x {s.repeat}"
                )
