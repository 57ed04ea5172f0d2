"""Transitional: the zoo's cards as ``ZooEntry`` pins for modules not yet on :mod:`hatzoo.zoo`."""

from __future__ import annotations

from dataclasses import dataclass

from hatzoo.zoo import Zoo, default_zoo


@dataclass(frozen=True)
class ZooEntry:
    name: str
    repo_id: str
    revision: str | None
    sha256: str | None


@dataclass(frozen=True)
class _Registry:
    zoo: Zoo

    def __contains__(self, name: object) -> bool:
        return name in self.zoo

    def resolve(self, name_or_repo_id, revision=None):
        return self.zoo.resolve(name_or_repo_id, revision)

    def get_card(self, name: str) -> ZooEntry:
        card = self.zoo.get_card(name)
        return ZooEntry(card.name, card.hub.repo_id, card.hub.revision, card.hub.sha256)


def default_registry() -> _Registry:
    return _Registry(default_zoo())
