"""``hatzoo.load``: a zoo name, Hub repo id or local folder -> a task's model or the full HAT model.

A zoo name at its card's pinned revision is looked for, in this order:

1. the Hugging Face cache (no network);
2. the Hub that ``HF_ENDPOINT`` names, when it is set (and ``HF_HUB_OFFLINE`` is not);
3. the bundled release ``zoo/<name>/`` (``HATZOO_ZOO``, else the checkout), if its sha256 is the pinned one;
4. the public Hub, when ``HF_ENDPOINT`` is not set (and ``HF_HUB_OFFLINE`` is not).

So a fresh clone loads offline at once, and a cache or a named Hub wins over the bundled files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from hatzoo.card import Card
from hatzoo.checkpoint import load_pretrained
from hatzoo.core.specialize import specialize
from hatzoo.errors import CheckpointError, HubError
from hatzoo.hub._env import hub_cache_dir, hub_endpoint, hub_offline
from hatzoo.hub.download import cached_snapshot, snapshot
from hatzoo.hub.release import GET_RELEASES, release_folder, verify_sha256, zoo_dir
from hatzoo.model import HATModel
from hatzoo.zoo import default_zoo

_STALE_CACHE = "the cached file is corrupted or the repository changed; delete it from the cache, load again"


def load(
    name_or_repo: str | Path,
    task: int | Literal["auto"] | None = None,
    revision: str | None = None,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Load a zoo model (cache, Hub or bundled release), a Hub repository (through its cache) or a folder.

    ``task=None`` returns the full ``HATModel`` (eval mode; call ``add_task`` and ``train()`` to
    continue); ``task=t`` returns task t's pruned, ready-to-run ``TaskModel``; ``task="auto"`` every
    task pruned, answering without a task id (``hatzoo.task_inference.TaskAgnosticModel``). A zoo name
    resolves through the cards to a repo id and pinned revision; ``revision`` overrides it.
    """
    zoo = default_zoo()
    target, resolved_revision = zoo.resolve(name_or_repo, revision)
    if isinstance(name_or_repo, str) and name_or_repo in zoo and not Path(target).is_dir():
        folder = _zoo_folder(zoo.get_card(name_or_repo), resolved_revision)
    else:
        folder = snapshot(target, resolved_revision)
    if task is None:
        return load_pretrained(folder, device=device, dtype=dtype, model_class=HATModel)
    model = load_pretrained(folder, device=device, dtype=dtype, locks=False, model_class=HATModel)
    if task == "auto":
        from hatzoo.task_inference import TaskAgnosticModel

        return TaskAgnosticModel.from_hat_model(model)
    return specialize(model, task, consume=True)


def _zoo_folder(card: Card, revision: str | None) -> Path:
    """The folder holding zoo model ``card.name`` at ``revision``, found in the order of this module's doc."""
    pin = card.hub
    pinned = revision == pin.revision
    expected = pin.sha256 if pinned else None
    folder = cached_snapshot(pin.repo_id, revision)
    if folder is not None:
        verify_sha256(folder, expected, card.name, _STALE_CACHE)
        return folder
    online = not hub_offline()
    named_hub = bool(os.environ.get("HF_ENDPOINT"))
    hub_error: HubError | None = None

    def from_hub() -> Path | None:
        nonlocal hub_error
        try:
            found = snapshot(pin.repo_id, revision)
        except HubError as err:
            hub_error = err
            return None
        verify_sha256(found, expected, card.name, _STALE_CACHE)
        return found

    if online and named_hub and (folder := from_hub()) is not None:
        return folder
    bundled = release_folder(card.name) if pinned else None
    if bundled is not None:
        if not pin.sha256:
            raise CheckpointError(
                f"the zoo card of {card.name} pins no sha256, so the bundled release {bundled} cannot be "
                "verified: pin hub.sha256 (the sha256 of its model.safetensors) in the card"
            )
        verify_sha256(
            bundled,
            pin.sha256,
            card.name,
            f"the bundled release is not the one the card pins; restore it (git checkout -- {bundled}) or "
            "update the card's hub pin",
        )
        return bundled
    if online and not named_hub and (folder := from_hub()) is not None:
        return folder
    raise _not_found(card, revision, hub_error)


def _not_found(card: Card, revision: str | None, hub_error: HubError | None) -> HubError:
    """Where zoo model ``card.name`` was looked for, and how to get the releases."""
    where = f"{card.hub.repo_id}@{revision}" if revision else card.hub.repo_id
    zoo = zoo_dir()
    if revision != card.hub.revision:
        bundle = f"the bundled release holds only the pinned revision {card.hub.revision}"
    elif zoo is None:
        bundle = "this installation has no zoo/ folder of bundled releases"
    else:
        bundle = f"there is no bundled release {zoo / card.name}"
    hub = f"the Hub at {hub_endpoint()} was not tried (HF_HUB_OFFLINE is set)"
    if hub_error is not None:
        hub = f"the Hub failed: {hub_error}"
    return HubError(
        f"cannot load zoo model {card.name} ({where}): it is not in the Hugging Face cache "
        f"{hub_cache_dir()}, {bundle}, and {hub}. To get it: {GET_RELEASES}"
    )
