"""``hatzoo.load``: a zoo name, Hub repo id or local folder -> a task's model or the full HAT model."""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

from hatzoo.checkpoint import WEIGHTS_NAME, load_pretrained
from hatzoo.core.model import HATModel
from hatzoo.core.specialize import specialize
from hatzoo.errors import CheckpointError
from hatzoo.hub.download import snapshot
from hatzoo.registry import default_registry


def load(
    name_or_repo: str | Path, task: int | None = None, revision: str | None = None, *, device: str = "cpu"
) -> nn.Module:
    """Load from the Hub (through its cache) or a folder.

    ``task=None`` returns the full ``HATModel`` (eval mode; call ``add_task`` and ``train()`` to
    continue); ``task=t`` returns task t's pruned, ready-to-run ``TaskModel``. A zoo name resolves
    through the cards to a repo id and pinned revision; ``revision`` overrides it.
    """
    registry = default_registry()
    target, resolved_revision = registry.resolve(name_or_repo, revision)
    folder = snapshot(target, resolved_revision)
    if isinstance(name_or_repo, str) and name_or_repo in registry and revision is None:
        _verify_checksum(folder / WEIGHTS_NAME, registry.get_card(name_or_repo).sha256, name_or_repo)
    if task is None:
        return load_pretrained(folder, device=device)
    model: HATModel = load_pretrained(folder, device=device, locks=False)
    return specialize(model, task, consume=True)


def _verify_checksum(path: Path, expected: str | None, name: str) -> None:
    if not expected:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise CheckpointError(
            f"{path} has sha256 {digest.hexdigest()[:16]}..., "
            f"but the zoo card of {name} pins {expected[:16]}...: the cached file is corrupted or the "
            "repository changed; delete it from the cache and load again"
        )
