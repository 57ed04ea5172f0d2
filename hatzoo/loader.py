"""``hatzoo.load``: a zoo name, Hub repo id or local folder -> a task's model or the full HAT model.

``hatzoo.create_model(name, pretrained=True)`` (timm's idiom) is the same load of the full HAT model.

A zoo name at its card's pinned revision is looked for, in this order:

1. the Hugging Face cache (no network);
2. the Hub that ``HF_ENDPOINT`` names, when it is set (and ``HF_HUB_OFFLINE`` is not);
3. the bundled release ``zoo/<name>/`` (``HATZOO_ZOO``, else the checkout);
4. the public Hub, when ``HF_ENDPOINT`` is not set (and ``HF_HUB_OFFLINE`` is not).

So a fresh clone loads offline at once, and a cache or a named Hub wins over the bundled files. A cache
that holds only some files of the release (after timm's ``hf-hub:`` download) is completed from the
first of the other sources that has the rest. Every file is checked against the card
(``hatzoo.hub.release.check_release``): a file that differs is refused by name, wherever it came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from hatzoo.card import Card
from hatzoo.checkpoint import load_pretrained, required_files
from hatzoo.core.config import HATConfig
from hatzoo.core.specialize import specialize
from hatzoo.errors import CheckpointError, HubError, InputError
from hatzoo.hub._env import hub_cache_dir, hub_endpoint, hub_offline
from hatzoo.hub.download import add_to_snapshot, cached_snapshot, snapshot
from hatzoo.hub.release import GET_RELEASES, check_release, release_folder, zoo_dir
from hatzoo.model import HATModel
from hatzoo.model import create_model as create_fresh_model
from hatzoo.zoo import default_zoo

_STALE_CACHE = "the cached file is corrupted or the repository changed; delete it from the cache, load again"
_BAD_BUNDLE = (
    "the bundled release is not the one the card pins; restore it (git checkout -- {}) or update the card's "
    "hub pin and files"
)


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
    folder = release_files(name_or_repo, revision)
    if task is None:
        return load_pretrained(folder, device=device, dtype=dtype, model_class=HATModel)
    model = load_pretrained(folder, device=device, dtype=dtype, locks=False, model_class=HATModel)
    if task == "auto":
        return _task_agnostic(model, folder)
    return specialize(model, task, consume=True)


def release_files(name_or_repo: str | Path, revision: str | None = None) -> Path:
    """The local folder of a zoo model (verified whole), a Hub repository's snapshot, or a folder."""
    zoo = default_zoo()
    target, resolved_revision = zoo.resolve(name_or_repo, revision)
    if isinstance(name_or_repo, str) and name_or_repo in zoo and not Path(target).is_dir():
        return _zoo_folder(zoo.get_card(name_or_repo), resolved_revision)
    return snapshot(target, resolved_revision)


def load_ratio_heads(name_or_repo: str | Path, revision: str | None = None) -> nn.Module | None:
    """The release's likelihood-ratio heads (``hatzoo.likelihood_ratio.RatioHeads``), None without them."""
    from hatzoo.likelihood_ratio import RATIO_FILE, RatioHeads

    path = release_files(name_or_repo, revision) / RATIO_FILE
    return RatioHeads.load(path) if path.is_file() else None


def _task_agnostic(model: HATModel, folder: Path) -> nn.Module:
    """Every task pruned and answering together, with the release's likelihood-ratio heads if it has them."""
    from hatzoo.task_inference import TaskAgnosticModel

    return TaskAgnosticModel.from_hat_model(model, load_ratio_heads(folder))


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    revision: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> HATModel:
    """timm's idiom: a fresh zoo architecture, or with ``pretrained=True`` the zoo release's weights.

    ``create_model(name, pretrained=True)`` is ``hatzoo.load(name)``: the full HAT model as released (a
    zoo name, Hub repo id or folder). The release fixes the architecture, so other keyword arguments
    may only repeat its values; without ``pretrained`` they go to the zoo architecture's builder
    (a fresh model, moved to ``device`` / ``dtype``).
    """
    if isinstance(pretrained, HATConfig):  # the second positional argument used to be the config
        kwargs["config"], pretrained = pretrained, False
    if not pretrained:
        if revision is not None:
            raise InputError(f"revision={revision!r} names a release: pass pretrained=True with it")
        model = create_fresh_model(name, **kwargs)
        return model if device == "cpu" and dtype is None else model.to(device=device, dtype=dtype)
    model: HATModel = load(name, revision=revision, device=device, dtype=dtype)
    released = {**model.spec.arch.get("kwargs", {}), **model.config.to_dict()}
    if isinstance(kwargs.get("config"), HATConfig):
        kwargs.update(kwargs.pop("config").to_dict())
    differ = {k: v for k, v in kwargs.items() if k not in released or released[k] != v}
    if differ:
        had = ", ".join(f"{k}={released[k]!r}" if k in released else f"no {k}" for k in differ)
        raise InputError(
            f"{name} was released with {had}; pretrained weights cannot take {differ}: leave them out, "
            f"or call create_model({name!r}, ...) without pretrained=True for a fresh model"
        )
    return model


def _zoo_folder(card: Card, revision: str | None) -> Path:
    """The folder holding zoo model ``card.name`` whole at ``revision``, in the order of this module's doc.

    A partial snapshot in the cache (timm's ``hf-hub:`` download fetches two files) is completed from
    the first source, in the same order, that holds the missing files; every file is checked on the way.
    """
    pin = card.hub
    pinned = revision == pin.revision
    cached = cached_snapshot(pin.repo_id, revision)
    missing = _check(cached, card, pinned, _STALE_CACHE) if cached is not None else None
    if cached is not None and not missing:
        return cached
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
        if still := _check(found, card, pinned, _STALE_CACHE):
            hub_error = HubError(f"{pin.repo_id}@{revision} on the Hub lacks {still}")
            return None
        return found

    if online and named_hub and (folder := from_hub()) is not None:
        return folder
    bundled = release_folder(card.name) if pinned else None
    if bundled is not None:
        if not card.files and not pin.sha256:
            raise CheckpointError(
                f"the zoo card of {card.name} pins no sha256 and lists no files, so the bundled release "
                f"{bundled} cannot be verified: pin them in the card (scripts/release_zoo.py writes both)"
            )
        lacking = check_release(bundled, card, _BAD_BUNDLE.format(bundled), bundled=True)
        if cached is None and not lacking:
            return bundled
        if cached is not None and not set(missing or ()) & set(lacking):
            for file in missing or ():
                add_to_snapshot(cached, file, bundled / file)
            return cached
    if online and not named_hub and (folder := from_hub()) is not None:
        return folder
    raise _not_found(card, revision, hub_error, missing)


def _check(folder: Path, card: Card, pinned: bool, remedy: str) -> list[str]:
    """The files of the release missing from ``folder``; a file that differs from the pin is refused."""
    if pinned:
        return check_release(folder, card, remedy)
    return [f for f in required_files(folder) if not (folder / f).is_file()]  # nothing pins them


def _not_found(
    card: Card, revision: str | None, hub_error: HubError | None, missing: list[str] | None
) -> HubError:
    """Where zoo model ``card.name`` was looked for, and how to get the releases."""
    where = f"{card.hub.repo_id}@{revision}" if revision else card.hub.repo_id
    cache = f"not in the Hugging Face cache {hub_cache_dir()}"
    if missing:
        cache = f"only partly in the Hugging Face cache {hub_cache_dir()} (it lacks {', '.join(missing)})"
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
        f"cannot load zoo model {card.name} ({where}): it is {cache}, {bundle}, and {hub}. "
        f"To get it: {GET_RELEASES}"
    )
