"""Publish a HAT model: save the checkpoint folder, then commit it with git or upload it over HTTP."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hatzoo.hub.publish import publish_git, publish_http

if TYPE_CHECKING:
    from hatzoo.core.model import HATModel

GIT_MIRROR_ENV = "HATZOO_GIT_MIRROR"


def push_model(
    model: HATModel,
    repo_id: str,
    *,
    revision: str = "main",
    commit_message: str = "Upload HAT model with hatzoo",
    card: str | None = None,
    git_mirror: str | Path | None = None,
    remote_url: str | None = None,
    tag: str | None = None,
    token: str | None = None,
) -> str:
    """Save ``model`` and publish it as one commit of ``repo_id``; returns the commit sha.

    git is used with ``git_mirror`` (or the HATZOO_GIT_MIRROR variable: the folder a self-hosted
    Hub such as olah serves) or ``remote_url``; otherwise the Hub's HTTP API.
    """
    git_mirror = git_mirror or os.environ.get(GIT_MIRROR_ENV) or None
    with tempfile.TemporaryDirectory(prefix="hatzoo-push-") as tmp:
        folder = model.save_pretrained(Path(tmp) / repo_id.split("/")[-1], card=card)
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
