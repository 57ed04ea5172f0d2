"""The zoo registry: one YAML card per zoo model (``cards/<name>.yaml``): how to build it, where to fetch it.

A card holds the architecture recipe and the Hub pointer::

    name: hat-vit-small
    arch: hat_vit_small_patch16_224
    model_args: {img_size: 32, patch_size: 4, in_chans: 1}
    hub: {repo_id: hatzoo/hat-vit-small, revision: main, sha256: null}
    description: ...

Other keys (``benchmark``, ``recipe``, ``results``) belong to training and are kept in ``raw``. Files
that are not ``*.yaml`` / ``*.yml`` (the Hub README cards, ``__init__.py``) are ignored.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from hatzoo.errors import HATError, HubError
from hatzoo.hub.download import is_repo_id

__all__ = ["Registry", "ZooEntry", "default_registry", "get_card", "list_models", "resolve"]

_CARD_SUFFIXES = (".yaml", ".yml")
CARDS_ENV = "HATZOO_CARDS"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it (``arch`` + ``model_args``) and where its weights live on the Hub."""

    name: str
    arch: str
    model_args: dict[str, Any]
    repo_id: str
    revision: str | None = "main"
    sha256: str | None = None
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    source: str = field(default="", repr=False, compare=False)

    @property
    def demo(self) -> bool:
        """A demo recipe (``demo: true``): resolvable by name, but not listed as a zoo model."""
        return bool(self.raw.get("demo"))


def _bad(source: str, what: str) -> HATError:
    """The error for a malformed card, naming its file."""
    return HATError(
        f"zoo card {source} is malformed: {what}; fix the card (see hatzoo/registry.py for the format)"
    )


def parse_card(text: str, source: str) -> ZooEntry:
    """Parse and validate one card's YAML text; ``source`` names the file in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _bad(source, f"invalid YAML ({err})") from err
    if not isinstance(data, dict):
        raise _bad(source, "the top level must be a mapping of keys (name, arch, model_args, hub)")
    for key in ("name", "arch"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise _bad(source, f"'{key}' must be a non-empty string")
    model_args = data.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise _bad(source, "'model_args' must be a mapping of keyword arguments")
    hub = data.get("hub")
    if not isinstance(hub, dict) or not isinstance(hub.get("repo_id"), str):
        raise _bad(source, "'hub' must be a mapping with a 'repo_id' ('org/name')")
    if not is_repo_id(hub["repo_id"]):
        raise _bad(source, f"hub.repo_id {hub['repo_id']!r} is not of the form 'org/name'")
    revision = hub.get("revision", "main")
    sha256 = hub.get("sha256")
    for key, value in (("revision", revision), ("sha256", sha256)):
        if value is not None and not isinstance(value, str):
            raise _bad(source, f"hub.{key} must be a string or null")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise _bad(source, "'description' must be a string")
    return ZooEntry(
        name=data["name"].strip(),
        arch=data["arch"].strip(),
        model_args=dict(model_args),
        repo_id=hub["repo_id"],
        revision=revision,
        sha256=sha256,
        description=description.strip(),
        raw=data,
        source=source,
    )


def _looks_like_path(text: str) -> bool:
    """True for something meant as a filesystem path rather than a name or repo id."""
    return text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1


class Registry:
    """Zoo cards read from folders (Paths or importlib.resources Traversables), parsed on first use.

    ``extra_dirs`` are read after ``cards_dir``; a card there replaces a shipped card of the same name.
    """

    def __init__(
        self,
        cards_dir: str | os.PathLike[str] | Traversable | None = None,
        extra_dirs: tuple[str | os.PathLike[str], ...] = (),
    ) -> None:
        if cards_dir is None:
            cards_dir = default_cards_dir()
        self.cards_dir: Traversable = (
            Path(cards_dir) if isinstance(cards_dir, (str, os.PathLike)) else cards_dir
        )
        self.extra_dirs = [Path(d) for d in extra_dirs]
        self._entries: dict[str, ZooEntry] | None = None

    def _load(self) -> dict[str, ZooEntry]:
        """Parse every card once; duplicate names and name/file mismatches are errors naming the files."""
        if self._entries is not None:
            return self._entries
        entries: dict[str, ZooEntry] = {}
        for folder in [self.cards_dir, *self.extra_dirs]:
            entries.update(self._read_folder(folder))
        self._entries = entries
        return entries

    @staticmethod
    def _read_folder(folder: Traversable) -> dict[str, ZooEntry]:
        entries: dict[str, ZooEntry] = {}
        if not folder.is_dir():
            raise HATError(
                f"the zoo cards folder {folder} does not exist (reinstall hatzoo, or fix {CARDS_ENV})"
            )
        for item in sorted(folder.iterdir(), key=lambda t: t.name):
            if not item.is_file() or not item.name.endswith(_CARD_SUFFIXES) or item.name.startswith("."):
                continue
            source = str(item)
            entry = parse_card(item.read_text(encoding="utf-8"), source)
            stem = item.name.rsplit(".", 1)[0]
            if entry.name != stem:
                raise _bad(source, f"its name {entry.name!r} differs from its file name {stem!r}")
            if entry.name in entries:
                raise _bad(source, f"the name {entry.name!r} is also used by {entries[entry.name].source}")
            entries[entry.name] = entry
        return entries

    def list_models(self, include_demos: bool = False) -> list[str]:
        """The names of the zoo models, sorted (demo recipes only with ``include_demos``)."""
        return sorted(name for name, entry in self._load().items() if include_demos or not entry.demo)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._load()

    def get_card(self, name: str) -> ZooEntry:
        """The card of zoo model ``name``; an unknown name is a HubError listing the known ones."""
        entries = self._load()
        if name not in entries:
            raise HubError(
                f"{name!r} is not a zoo model; known zoo models: {', '.join(sorted(entries)) or 'none'}"
            )
        return entries[name]

    def resolve(
        self, name_or_repo_id: str | os.PathLike[str], revision: str | None = None
    ) -> tuple[str, str | None]:
        """Where to load from: ``(local folder or repo id, revision)`` for a folder, zoo name or repo id.

        An existing local folder wins (as in ``from_pretrained``), then a zoo name (its card's repo and
        revision; ``revision`` overrides), then an ``org/name`` repo id. Anything else is a HubError.
        """
        text = os.fspath(name_or_repo_id)
        local = Path(text).expanduser()
        if local.is_dir():
            return str(local.resolve()), None
        if _looks_like_path(text):
            raise HubError(f"the folder {text!r} does not exist: check the path")
        entries = self._load()
        if text in entries:
            entry = entries[text]
            return entry.repo_id, revision if revision is not None else entry.revision
        if is_repo_id(text):
            return text, revision
        raise HubError(
            f"{text!r} is not a zoo model, a Hub repo id ('org/name') or a local folder; "
            f"known zoo models: {', '.join(sorted(entries)) or 'none'}"
        )


def default_cards_dir() -> Traversable:
    """The installed ``hatzoo.cards`` package data, or the repo's ``cards/`` folder when run from source."""
    try:
        cards = importlib.resources.files("hatzoo.cards")
        if cards.is_dir():
            return cards
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "cards"


def default_registry() -> Registry:
    """The zoo that ships with hatzoo, plus the card folders named by HATZOO_CARDS (os.pathsep-separated)."""
    return _registry_for(os.environ.get(CARDS_ENV, ""))


@functools.cache
def _registry_for(extra: str) -> Registry:
    return Registry(default_cards_dir(), tuple(p for p in extra.split(os.pathsep) if p))


def list_models(include_demos: bool = False) -> list[str]:
    """The names of the zoo's models (demo recipes only with ``include_demos``)."""
    return default_registry().list_models(include_demos)


def get_card(name: str) -> ZooEntry:
    """The card of one zoo model."""
    return default_registry().get_card(name)


def resolve(name_or_repo_id: str | os.PathLike[str], revision: str | None = None) -> tuple[str, str | None]:
    """Where to load a zoo name, repo id or local folder from: ``(folder or repo id, revision)``."""
    return default_registry().resolve(name_or_repo_id, revision)
