"""Publish trained zoo models into a Hub mirror with git and pin them in their cards.

For each name: the finished run's ``runs/<name>/model`` folder is loaded (checked), given its data
config (normalization and input size from the run's results.json) if it lacks one, saved with the
run's generated model card, committed into ``<mirror>/models/<org>/<name>``, and the card's hub pin
(commit and sha256 of model.safetensors) is written with ``hatzoo.card.update_card``.

    python scripts/publish_zoo.py --mirror .hub/mirror hat-vit-tiny hat-resnet18 hat-vit-small
    python -m hatzoo.hub .hub/mirror       # then serve the mirror (olah) and point HF_ENDPOINT at it
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

from hatzoo.card import HubPin, read_card, update_card
from hatzoo.checkpoint import load_pretrained
from hatzoo.data_config import DataConfig
from hatzoo.hub.publish import publish_git

ROOT = Path(__file__).resolve().parent.parent


def publish(name: str, mirror: Path, runs: Path) -> str:
    run = runs / name
    results = json.loads((run / "results.json").read_text())
    if not results.get("complete"):
        raise SystemExit(f"{run} is not a finished run; train it first (hatzoo train --card {name})")
    model = load_pretrained(run / "model")
    if not model.data_config:
        bench = results["benchmark"]
        model.data_config = DataConfig(
            mean=tuple(bench["normalization"]["mean"]),
            std=tuple(bench["normalization"]["std"]),
            input_size=tuple(bench["input_shape"]),
            benchmark=bench["name"],
        ).to_dict()
    card_path = ROOT / "cards" / f"{name}.yaml"
    repo_id = read_card(card_path).hub.repo_id
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save_pretrained(Path(tmp) / name, card=(run / "model" / "README.md").read_text())
        for extra in ("accuracy.png", "capacity.png", "results.json"):
            if (run / "model" / extra).is_file():
                (folder / extra).write_bytes((run / "model" / extra).read_bytes())
        digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        sha = publish_git(
            folder, repo_id, mirror_root=mirror, message=f"{name}: trained with cards/{name}.yaml"
        )
    update_card(card_path, hub=HubPin(repo_id, sha, digest))
    return f"{name}: {repo_id}@{sha} sha256 {digest}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="zoo names with a finished run in --runs")
    parser.add_argument("--mirror", default=str(ROOT / ".hub" / "mirror"), help="Hub mirror folder (olah)")
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="folder of finished runs")
    args = parser.parse_args()
    for name in args.names:
        print(publish(name, Path(args.mirror), Path(args.runs)))


if __name__ == "__main__":
    main()
