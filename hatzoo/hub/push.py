"""Publish a HAT model: save the checkpoint folder, then commit it with git or upload it over HTTP.

:func:`publish_folder` holds the publishing options; ``HATModel.push_to_hub`` (through
:func:`push_model`) and ``hatzoo push`` both end in it.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatzoo.checkpoint import save_pretrained
from hatzoo.errors import InputError
from hatzoo.hub.publish import publish_git, publish_http

if TYPE_CHECKING:
    from hatzoo.core.model import HATModel

GIT_MIRROR_ENV = "HATZOO_GIT_MIRROR"
PUSH_MESSAGE = "Upload HAT model with hatzoo"


def publish_folder(
    folder: str | Path,
    repo_id: str,
    *,
    revision: str = "main",
    commit_message: str = PUSH_MESSAGE,
    git_mirror: str | Path | None = None,
    remote_url: str | None = None,
    tag: str | None = None,
    token: str | None = None,
) -> str:
    """Publish a checkpoint folder as one commit of ``repo_id``'s ``revision``; returns the commit sha.

    git is used with ``git_mirror`` (or the HATZOO_GIT_MIRROR variable: the folder a self-hosted
    Hub such as olah serves) or ``remote_url`` (``tag`` marks the commit); otherwise the Hub's HTTP
    API (huggingface.co needs a ``token`` or a login).
    """
    git_mirror = git_mirror or os.environ.get(GIT_MIRROR_ENV) or None
    if git_mirror is not None or remote_url is not None:
        return publish_git(
            folder,
            repo_id,
            mirror_root=git_mirror,
            remote_url=remote_url,
            branch=revision,
            message=commit_message,
            tag=tag,
        )
    return publish_http(folder, repo_id, revision=revision, message=commit_message, token=token)


def push_model(model: HATModel, repo_id: str, *, card: str | None = None, **options: Any) -> str:
    """Save ``model`` (with ``card`` as its README) and publish it; returns the commit sha.

    ``options`` are :func:`publish_folder`'s: revision, commit_message, git_mirror, remote_url, tag, token.
    """
    signature = inspect.signature(publish_folder)
    try:
        signature.bind(None, repo_id, **options)
    except TypeError as err:  # before anything is saved
        known = ", ".join(["card", *list(signature.parameters)[2:]])
        raise InputError(f"push_to_hub {err}; its options are {known}") from err
    with tempfile.TemporaryDirectory(prefix="hatzoo-push-") as tmp:
        folder = save_pretrained(model, Path(tmp) / repo_id.split("/")[-1], card=card)
        return publish_folder(folder, repo_id, **options)
