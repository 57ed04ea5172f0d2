"""Write each zoo release's room for new tasks (free units per mask group) into its card.

The release step writes it for newly trained models (``card_results``); this fills it in for
releases already in ``zoo/`` from their files, so ``hatzoo info`` can show it without torch.

    python scripts/card_capacity.py            # every card that has a release in zoo/
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hatzoo.card import read_card, update_card
from hatzoo.checkpoint import load_pretrained
from hatzoo.training.report import card_capacity

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    for path in sorted((ROOT / "cards").glob("*.yaml")):
        card, folder = read_card(path), ROOT / "zoo" / path.stem
        if card.results is None or not folder.is_dir():
            continue
        capacity = card_capacity(load_pretrained(folder, locks=False).capacity())
        update_card(path, results={**dataclasses.asdict(card.results), "capacity": capacity})
        full = sum(1 for g in capacity.values() if g["free"] == 0)
        print(f"{path.stem}: {full} of {len(capacity)} groups full")


if __name__ == "__main__":
    main()
