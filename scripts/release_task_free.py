"""Give a zoo release the replay buffer and likelihood-ratio heads its card's ``recipe.replay`` asks for.

A run with ``recipe.replay`` and no ``recipe.ood`` trains exactly as one without; the buffer and the
heads are made after its last task. So a release trained before those files existed gets them here as
``hatzoo train`` makes them: the buffer is filled task by task from each training split with the
recipe's seed, and the heads are fitted on the release's own (shipped-precision) weights. The weights and
masks stay byte-identical. The release's README gets the recipe's buffer row, and the card its new pin.

    python scripts/release_task_free.py hat-resnet18 hat-vit-small
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hatzoo.card import read_card, update_card
from hatzoo.checkpoint import load_pretrained
from hatzoo.hub.release import release_files, release_pin
from hatzoo.likelihood_ratio import RATIO_FILE
from hatzoo.replay import REPLAY_FILE
from hatzoo.training.common import load_benchmark
from hatzoo.training.loop import recipe_buffer, task_free_heads
from hatzoo.training.report import HUB_DATASETS, replay_text

ROOT = Path(__file__).resolve().parent.parent
SEED_ROW = "| seed | {seed} |\n"


def add_task_free(name: str, zoo: Path) -> str:
    card_path = ROOT / "cards" / f"{name}.yaml"
    card = read_card(card_path)
    if not card.recipe.replay or card.recipe.ood:
        raise SystemExit(
            f"{card_path}: recipe.replay must be set and recipe.ood off (a run with ood trains differently: "
            f"retrain it with hatzoo train --card {name})"
        )
    folder = zoo / name
    model = load_pretrained(folder, locks=False)
    seq = load_benchmark(card)
    buffer = recipe_buffer(card, seq, len(seq))
    task_free_heads(model, seq, buffer).save(folder / RATIO_FILE)
    buffer.save(folder / REPLAY_FILE)

    readme = folder / "README.md"
    text = readme.read_text(encoding="utf-8")
    seed_row = SEED_ROW.format(seed=card.recipe.seed)
    if "| replay buffer |" not in text:
        if seed_row not in text:
            raise SystemExit(f"{readme}: no recipe table row {seed_row.strip()!r} to add the buffer after")
        dataset_name = HUB_DATASETS.get(card.benchmark.name, (card.benchmark.name,) * 2)[1]
        row = f"| replay buffer | {replay_text(card, dataset_name)} |\n"
        readme.write_text(text.replace(seed_row, seed_row + row, 1), encoding="utf-8")
    pin = release_pin(folder, card.hub.repo_id)
    update_card(card_path, hub=pin, files=release_files(folder))
    return f"{name}: buffer of {len(buffer)} images and {len(seq)} heads; {pin.repo_id}@{pin.revision}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="zoo names whose card sets recipe.replay")
    parser.add_argument("--zoo", default=str(ROOT / "zoo"), help="folder of release folders")
    args = parser.parse_args()
    for name in args.names:
        print(add_task_free(name, Path(args.zoo)), flush=True)


if __name__ == "__main__":
    main()
