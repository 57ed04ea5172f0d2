"""Transitional view of :mod:`hatzoo.zoo` for modules not yet moved to it (``hatzoo.loader``,
``hatzoo.hub.release``): the zoo's cards as ``ZooEntry`` pins. New code uses ``hatzoo.zoo.get_card``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hatzoo.zoo import Zoo, default_zoo


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model's name and Hub pin (``Card.name`` and ``Card.hub``)."""

    name: str
    repo_id: str
    revision: str | None
    sha256: str | None


class _Registry:
    def __init__(self, zoo: Zoo) -> None:
        self.zoo = zoo

    def __contains__(self, name: object) -> bool:
        return name in self.zoo

    def resolve(self, name_or_repo_id: str | os.PathLike[str], revision: str | None = None):
        return self.zoo.resolve(name_or_repo_id, revision)

    def get_card(self, name: str) -> ZooEntry:
        card = self.zoo.get_card(name)
        return ZooEntry(card.name, card.hub.repo_id, card.hub.revision, card.hub.sha256)


def default_registry() -> _Registry:
    """The default zoo (shipped cards plus HATZOO_CARDS) seen as pins."""
    return _Registry(default_zoo())
