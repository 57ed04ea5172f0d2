"""Training recipes are zoo cards: :class:`hatzoo.card.Card` read by the one card parser.

``Recipe`` is the card type under its training name; ``load_recipe`` takes a card path from anywhere
or a zoo name (``HATZOO_CARDS`` honoured, as ``hatzoo.load`` does).
"""

from __future__ import annotations

import os
from pathlib import Path

from hatzoo.card import LR_SCHEDULES, SCALE_RAMPS, BenchmarkSpec, Card, TrainSpec, read_card
from hatzoo.card import CardError as RecipeError
from hatzoo.card import HubPin as HubSpec

Recipe = Card

__all__ = [
    "LR_SCHEDULES",
    "SCALE_RAMPS",
    "BenchmarkSpec",
    "HubSpec",
    "Recipe",
    "RecipeError",
    "TrainSpec",
    "load_recipe",
]


def load_recipe(card: str | os.PathLike[str]) -> Recipe:
    """A recipe from a card file (any path), or from a zoo name (``hat-vit-small``)."""
    path = Path(card).expanduser()
    if path.is_file():
        return read_card(path)
    from hatzoo.zoo import default_zoo

    zoo = default_zoo()
    if isinstance(card, str) and card in zoo:
        return zoo.get_card(card)
    raise RecipeError(
        f"card {os.fspath(card)!r} is neither a card file nor a zoo name; give a path to a card "
        f"(cards/<name>.yaml) or one of: {', '.join(zoo.list_models(include_demos=True))}"
    )
