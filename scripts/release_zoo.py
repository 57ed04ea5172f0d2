"""Release trained zoo models into ``zoo/<name>/`` and pin them in their cards.

For each name: the finished run ``RUNS/<name>`` is loaded, saved into ``zoo/<name>`` in the release
precision (``config.json``, ``model.safetensors``, ``tasks.safetensors``, ``README.md`` and the run's
plots; with ``recipe.replay`` its buffer and the likelihood-ratio heads fitted again on the shipped
weights), loaded back from there, and scored task by task on the full test split. The card gets the
run's results with the release's own accuracy, and the pin (deterministic revision, and the sha256 of
model.safetensors, which binds tasks.safetensors); the README the same numbers. A run trained
without its joint bound keeps the bound the card already reports for the same recipe.

    python scripts/release_zoo.py --runs runs hat-vit-small hat-vit-tiny hat-resnet18 hat-resnet18-mixed
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hatzoo.card import read_card, update_card
from hatzoo.checkpoint import load_pretrained
from hatzoo.data_config import DataConfig
from hatzoo.hub.release import release_files, release_pin
from hatzoo.likelihood_ratio import RATIO_FILE
from hatzoo.model import HATModel
from hatzoo.replay import REPLAY_FILE, ReplayBuffer
from hatzoo.training.common import Runtime, load_benchmark
from hatzoo.training.loop import evaluate, task_free_heads
from hatzoo.training.metrics import Results
from hatzoo.training.report import card_results, plot_accuracy, plot_capacity, render_card

ROOT = Path(__file__).resolve().parent.parent


def release(name: str, runs: Path, zoo: Path, precision: str) -> str:
    run = runs / name
    results = Results.load(run / "results.json")
    if not results.complete:
        raise SystemExit(f"{run} is not a finished run; train it first (hatzoo train --card {name})")
    card_path = ROOT / "cards" / f"{name}.yaml"
    card = read_card(card_path)
    if results.joint is None and card.results and card.results.joint:
        results.joint = [a / 100 for a in card.results.joint]
        results.joint_seconds = card.results.joint_seconds
    model = HATModel.from_pretrained(run / "model")
    seq = load_benchmark(card)
    if not model.data_config:
        model.data_config = DataConfig(
            mean=tuple(seq.mean), std=tuple(seq.std), input_size=tuple(seq.input_shape), benchmark=seq.name
        ).to_dict()
    folder = zoo / name
    model.save_pretrained(folder, precision=precision, card="")
    shipped = load_pretrained(folder, locks=False)
    if card.recipe.replay:  # the heads read the shipped weights' features, so they are fitted on them
        buffer = ReplayBuffer.load(run / "model" / REPLAY_FILE)
        task_free_heads(shipped, seq, buffer).save(folder / RATIO_FILE)
        buffer.save(folder / REPLAY_FILE)
    accuracy = [evaluate(shipped, seq[t], t, Runtime(progress=False)) for t in range(results.num_trained)]
    block = card_results(results)
    block["release"] = {
        "precision": precision,
        "accuracy": [round(100 * a, 2) for a in accuracy],
        "average_accuracy": round(100 * sum(accuracy) / len(accuracy), 2),
    }
    (folder / "README.md").write_text(render_card(results, card, release=block["release"]), encoding="utf-8")
    plot_accuracy(results, folder / "accuracy.png")
    plot_capacity(results, folder / "capacity.png")
    pin = release_pin(folder, card.hub.repo_id)
    update_card(card_path, hub=pin, files=release_files(folder), results=block)
    size = sum(f.stat().st_size for f in folder.iterdir())
    return (
        f"{name}: {size / 1e6:.1f} MB, release accuracy {block['release']['accuracy']} "
        f"(average {block['release']['average_accuracy']}; trained {block['average_accuracy']}), "
        f"{pin.repo_id}@{pin.revision}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="zoo names with a finished run in --runs")
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="folder of finished runs")
    parser.add_argument("--zoo", default=str(ROOT / "zoo"), help="folder of release folders")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="release precision")
    args = parser.parse_args()
    for name in args.names:
        print(release(name, Path(args.runs), Path(args.zoo), args.precision), flush=True)


if __name__ == "__main__":
    main()
