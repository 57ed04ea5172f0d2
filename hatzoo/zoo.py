"""The zoo: the cards of the trained models, read from folders, and names resolved to where they load from.

The shipped cards come first (``hatzoo.cards`` when installed, else the repository's ``cards/``), then
the folders named by ``HATZOO_CARDS`` (os.pathsep-separated), whose cards replace shipped ones of the
same name. Files that are not ``*.yaml`` / ``*.yml`` (Hub READMEs, ``__init__.py``) are ignored.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from importlib.resources.abc import Traversable
from pathlib import Path

from hatzoo.card import Card, CardError, parse_card
from hatzoo.errors import HubError
from hatzoo.hub.download import is_repo_id

__all__ = ["CARDS_ENV", "Zoo", "default_zoo", "get_card", "list_models", "resolve"]

CARDS_ENV = "HATZOO_CARDS"
_CARD_SUFFIXES = (".yaml", ".yml")


class Zoo:
    """Cards read from folders (Paths or importlib.resources Traversables), parsed on first use."""

    def __init__(self, *folders: str | os.PathLike[str] | Traversable, check_names: bool = True) -> None:
        self.folders = [Path(f) if isinstance(f, (str, os.PathLike)) else f for f in folders]
        self.check_names = check_names  # False: cards parsed without torch (see Card.from_dict)
        self._cards: dict[str, Card] | None = None

    def cards(self) -> dict[str, Card]:
        """Every card by name; a later folder's card replaces an earlier one of the same name."""
        if self._cards is None:
            self._cards = {}
            for folder in self.folders:
                self._cards.update(_read_folder(folder, self.check_names))
        return self._cards

    def list_models(self, include_demos: bool = False) -> list[str]:
        """The names of the zoo models, sorted (demo recipes only with ``include_demos``)."""
        return sorted(name for name, card in self.cards().items() if include_demos or not card.demo)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.cards()

    def get_card(self, name: str) -> Card:
        """The card of zoo model ``name``; an unknown name is a HubError listing the known ones."""
        if name not in self:
            raise HubError(f"{name!r} is not a zoo model; known zoo models: {self._known()}")
        return self.cards()[name]

    def resolve(
        self, name_or_repo_id: str | os.PathLike[str], revision: str | None = None
    ) -> tuple[str, str | None]:
        """Where to load from: ``(local folder or repo id, revision)`` for a folder, zoo name or repo id.

        An existing local folder wins (as in ``from_pretrained``), then a zoo name (its card's pinned
        repo and revision; ``revision`` overrides), then an ``org/name`` repo id.
        """
        text = os.fspath(name_or_repo_id)
        local = Path(text).expanduser()
        if local.is_dir():
            return str(local.resolve()), None
        if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
            raise HubError(f"the folder {text!r} does not exist: check the path")
        if text in self:
            hub = self.cards()[text].hub
            return hub.repo_id, revision if revision is not None else hub.revision
        if is_repo_id(text):
            return text, revision
        raise HubError(
            f"{text!r} is not a zoo model, a Hub repo id ('org/name') or a local folder; "
            f"known zoo models: {self._known()}"
        )

    def _known(self) -> str:
        return ", ".join(self.list_models(include_demos=True)) or "none"


def _read_folder(folder: Traversable, check_names: bool = True) -> dict[str, Card]:
    if not folder.is_dir():
        raise CardError(
            f"the zoo cards folder {folder} does not exist (reinstall hatzoo, or fix {CARDS_ENV})"
        )
    cards: dict[str, Card] = {}
    for item in sorted(folder.iterdir(), key=lambda t: t.name):
        if not item.is_file() or not item.name.endswith(_CARD_SUFFIXES) or item.name.startswith("."):
            continue
        card = parse_card(item.read_text(encoding="utf-8"), str(item), check_names=check_names)
        stem = item.name.rsplit(".", 1)[0]
        if card.name != stem:
            raise CardError(f"{item}: name: {card.name!r} differs from the file name {stem!r}; rename one")
        if card.name in cards:
            raise CardError(f"{item}: name: {card.name!r} is also used by {cards[card.name].source}")
        cards[card.name] = card
    return cards


def shipped_cards_dir() -> Traversable:
    """The installed ``hatzoo.cards`` package data, or the repository's ``cards/`` when run from source."""
    try:
        cards = importlib.resources.files("hatzoo.cards")
        if cards.is_dir():
            return cards
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "cards"


def default_zoo(check_names: bool = True) -> Zoo:
    """The shipped cards plus those in the folders named by HATZOO_CARDS (``check_names``: see Zoo)."""
    return _zoo_for(os.environ.get(CARDS_ENV, ""), check_names)


@functools.cache
def _zoo_for(extra: str, check_names: bool) -> Zoo:
    return Zoo(shipped_cards_dir(), *(p for p in extra.split(os.pathsep) if p), check_names=check_names)


def list_models(include_demos: bool = False) -> list[str]:
    """The names of the zoo's models (demo recipes only with ``include_demos``)."""
    return default_zoo().list_models(include_demos)


def get_card(name: str) -> Card:
    """The card of one zoo model (HATZOO_CARDS honoured)."""
    return default_zoo().get_card(name)


def resolve(name_or_repo_id: str | os.PathLike[str], revision: str | None = None) -> tuple[str, str | None]:
    """Where to load a zoo name, repo id or local folder from: ``(folder or repo id, revision)``."""
    return default_zoo().resolve(name_or_repo_id, revision)
