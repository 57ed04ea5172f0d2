"""``HATModel.from_pretrained`` and ``model.push_to_hub``: the Hub layer's methods of ``hatzoo.HATModel``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import torch

from hatzoo.checkpoint import load_pretrained
from hatzoo.hub.download import snapshot
from hatzoo.hub.push import push_model


class HubMixin:
    """Loading from a folder or a Hub repository, and publishing to one (as PEFT's ``PushToHubMixin``)."""

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | Path,
        revision: str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> Self:
        """Load the full HAT model from a local folder or a Hub repository (at a branch, tag or commit)."""
        return load_pretrained(
            snapshot(repo_id_or_path, revision), device=device, dtype=dtype, model_class=cls
        )

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Save and publish to the Hub; returns the commit sha (options: hatzoo.hub.push.publish_folder).

        With ``git_mirror`` (a self-hosted mirror folder) or ``remote_url`` the repository is published
        with git; otherwise through the Hub's HTTP API (huggingface.co needs a token). ``card`` is the
        README text, as in ``save_pretrained``.
        """
        return push_model(self, repo_id, **options)
