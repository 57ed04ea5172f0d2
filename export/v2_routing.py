"""What every per-model v2 route shares: the model a v2 name means, and the pair of paths
(``/v2/models/{name}...`` and ``/v2/models/{name}/versions/{version}...``) each such route answers on."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from .bundle import TaskSpec
from .context import AppServing, Serving
from .decode import RequestError
from .v1 import AGNOSTIC_TASK

VERSION = "1"  # every model has one version


def resolve(s: Serving, name: str, version: str | None) -> tuple[str, str, TaskSpec | None]:
    """(model, task, spec) of a v2 model name; the task-free model ``<model>`` has task '*', no spec."""
    if name in s.pool.bundles:
        model, task, spec = name, AGNOSTIC_TASK, None
    elif name in s.v2_names:
        model, task = s.v2_names[name]
        spec = s.pool.spec(model, task)
    else:
        known = sorted([*s.v2_names, *s.pool.bundles])
        raise RequestError(404, f"unknown v2 model {name!r}; known: {known}")
    if version not in (None, "", VERSION):
        raise RequestError(404, f"model {name!r} has no version {version!r}; its one version is {VERSION!r}")
    return model, task, spec


def model_routes(
    router: APIRouter, method: str, suffix: str, handler: Callable[..., Any], **options: Any
) -> None:
    """Register ``handler(serving, name, version, request)`` on ``/v2/models/{name}<suffix>`` (version None)
    and on ``/v2/models/{name}/versions/{version}<suffix>``."""

    async def latest(name: str, request: Request, s: AppServing) -> Any:
        return await handler(s, name, None, request)

    async def versioned(name: str, version: str, request: Request, s: AppServing) -> Any:
        return await handler(s, name, version, request)

    options.setdefault("description", inspect.cleandoc(handler.__doc__ or ""))
    for path, endpoint in (("", latest), ("/versions/{version}", versioned)):
        router.add_api_route(f"/v2/models/{{name}}{path}{suffix}", endpoint, methods=[method], **options)
