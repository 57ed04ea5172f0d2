"""Cards, the zoo of cards, and the one registry idiom (architectures, policies, schedules, optimizers)."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from torch import nn

import hatzoo
from hatzoo._registry import Registry
from hatzoo.card import CardError, HubPin, read_card, update_card
from hatzoo.training import load_recipe
from hatzoo.zoo import Zoo

SHIPPED = Path(__file__).resolve().parent.parent / "cards"
ZOO_MODELS = ["hat-resnet18", "hat-resnet18-mixed", "hat-vit-small", "hat-vit-tiny"]

VIT_CARD = """\
name: hat-vit-small
arch: hat_vit_small_patch16_224
model_args: {img_size: 32, patch_size: 4, in_chans: 1}
hub: {repo_id: hatzoo/hat-vit-small, revision: main, sha256: null}
description: A HAT ViT-S.
benchmark: {name: split-mnist, seed: 1}
"""

RESNET_CARD = """\
name: hat-resnet18
arch: hat-resnet18
recipe:
  optimizer: adam
  lr: 0.001
hub:
  repo_id: hatzoo/hat-resnet18
  revision: v1.0
  sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
"""

RESULTS = {
    "complete": True,
    "tasks": ["0 vs 1", "2 vs 3"],
    "train_per_task": [100, 100],
    "test_per_task": [50, 50],
    "accuracy": [[99.0], [99.0, 97.5]],
    "average_accuracy": 98.25,
    "bwt": 0.0,
    "joint": None,
    "joint_average_accuracy": None,
    "gap_to_joint": None,
    "train_seconds": 1.5,
    "joint_seconds": None,
}


@pytest.fixture
def cards(tmp_path: Path) -> Path:
    """A cards folder with two zoo models and files the zoo must ignore."""
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "hat-vit-small.yaml").write_text(VIT_CARD)
    (folder / "hat-resnet18.yml").write_text(RESNET_CARD)
    (folder / "hat-vit-small.md").write_text("---\nlibrary_name: hatzoo\n---\n# the Hub README\n")
    (folder / "__init__.py").write_text("")
    (folder / "drafts").mkdir()
    (folder / "drafts" / "broken.yaml").write_text("name: [")
    return folder


# ---------------------------------------------------------------------------- the zoo
def test_the_shipped_zoo() -> None:
    assert hatzoo.list_models() == ZOO_MODELS
    assert "hat-vit-demo" in hatzoo.list_models(include_demos=True)  # a demo recipe: loadable, not listed
    card = load_recipe("hat-vit-small")
    assert (card.benchmark.name, card.recipe.optimizer) == ("split-fashion-mnist", "adam")
    assert card.hub.repo_id == "hatzoo/hat-vit-small" and len(card.hub.revision) == 40
    assert len(card.results.final) == 5 and all(90 < a <= 100 for a in card.results.final)
    assert card.results.average_accuracy == pytest.approx(sum(card.results.final) / 5, abs=0.01)


def test_list_get_and_resolve(cards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    zoo = Zoo(cards)
    assert zoo.list_models() == ["hat-resnet18", "hat-vit-small"]
    vit = zoo.get_card("hat-vit-small")
    assert (vit.arch, vit.model_args["img_size"], vit.benchmark.seed) == ("hat_vit_small_patch16_224", 32, 1)
    resnet = zoo.get_card("hat-resnet18")
    assert (resnet.recipe.optimizer, resnet.recipe.lr, resnet.recipe.epochs) == ("adam", 0.001, 3)
    assert resnet.hub == HubPin(
        "hatzoo/hat-resnet18", "v1.0", "9f86d081" + RESNET_CARD.split("9f86d081")[1].strip()
    )
    assert zoo.resolve("hat-resnet18") == ("hatzoo/hat-resnet18", "v1.0")
    assert zoo.resolve("hat-resnet18", revision="abc123") == ("hatzoo/hat-resnet18", "abc123")
    assert zoo.resolve("someone/their-model", "v2") == ("someone/their-model", "v2")
    (tmp_path / "hat-vit-small").mkdir()  # a local folder wins over a zoo name, as in from_pretrained
    assert zoo.resolve("hat-vit-small") == (str((tmp_path / "hat-vit-small").resolve()), None)
    with pytest.raises(
        hatzoo.HubError, match="'vit-tiny' is not a zoo model.*known zoo models: hat-resnet18, hat-vit-small"
    ):
        zoo.resolve("vit-tiny")
    with pytest.raises(hatzoo.HubError, match="the folder './missing/dir' does not exist"):
        zoo.resolve("./missing/dir")


def test_hatzoo_cards_reaches_the_zoo_and_training(cards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATZOO_CARDS", str(cards))
    assert "hat-vit-small" in hatzoo.list_models()
    assert load_recipe("hat-vit-small").model_args["img_size"] == 32  # replaces the shipped card
    assert load_recipe(cards / "hat-resnet18.yml").hub.revision == "v1.0"  # a path from anywhere
    with pytest.raises(CardError, match="neither a card file nor a zoo name.*hat-vit-demo"):
        load_recipe("hat-nope")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name: [unclosed", "invalid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("arch: hat-vit-tiny\n", "name: must be a non-empty string"),
        ("name: m\narch: hat-vit-huge\n", "arch: unknown architecture 'hat-vit-huge'"),
        (
            "name: m\narch: hat-vit-tiny\nhub: {repo_id: not-a-repo}\n",
            "hub.repo_id: must look like 'org/name'",
        ),
        ("name: m\narch: hat-vit-tiny\nhub: {repo_id: a/b, revision: 3}\n", "hub.revision: must be a string"),
        ("name: m\narch: hat-vit-tiny\nmodel_args: [1]\n", "model_args: must be a mapping"),
        (
            "name: m\narch: hat-vit-tiny\nrecipe: {optimizer: lion}\n",
            "recipe.optimizer: unknown value 'lion'",
        ),
        ("name: m\narch: hat-vit-tiny\nrecipe: {schedule: step}\n", "recipe.schedule: unknown value 'step'"),
        ("name: m\narch: hat-vit-tiny\nresults: {acc: 1}\n", "results.acc: unknown key"),
    ],
)
def test_malformed_cards_name_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(CardError, match=rf"m\.yaml: .*{key}"):
        Zoo(tmp_path).list_models()
    with pytest.raises(CardError, match=key):
        read_card(tmp_path / "m.yaml")


def test_name_must_match_file_and_folder_must_exist(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text(VIT_CARD)
    with pytest.raises(
        CardError, match=r"other\.yaml: name: 'hat-vit-small' differs from the file name 'other'"
    ):
        Zoo(tmp_path).list_models()
    with pytest.raises(CardError, match="cards folder .* does not exist"):
        Zoo(tmp_path / "nowhere").list_models()


# ---------------------------------------------------------------------------- the one writer
def test_rewriting_a_shipped_card_gives_the_same_bytes(tmp_path: Path) -> None:
    for path in sorted(SHIPPED.glob("*.yaml")):
        card = read_card(path)
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        update_card(copy, hub=card.hub, results=card.results and asdict(card.results))
        assert copy.read_bytes() == path.read_bytes(), path.name


def test_pins_and_results_are_written_in_place_and_byte_stable(cards: Path) -> None:
    path = cards / "hat-resnet18.yml"
    pin = HubPin("hatzoo/hat-resnet18", "a" * 40, "b" * 64)
    update_card(path, hub=pin, results=RESULTS)
    first = path.read_bytes()
    update_card(path, hub=pin, results=RESULTS)
    assert path.read_bytes() == first
    text = first.decode()
    assert text.startswith(RESNET_CARD.split("hub:")[0])  # the recipe is kept as written (block style)
    assert f"hub: {{repo_id: hatzoo/hat-resnet18, revision: {'a' * 40}, sha256: {'b' * 64}}}\n" in text
    assert "  accuracy:\n  - [99.0]\n  - [99.0, 97.5]\n" in text and text.count("results:") == 1
    card = read_card(path)
    assert card.hub == pin and card.results.final == [99.0, 97.5] and card.recipe.lr == 0.001


def test_a_pin_can_go_to_a_copy_and_a_bad_value_writes_nothing(cards: Path, tmp_path: Path) -> None:
    source = cards / "hat-vit-small.yaml"
    copy = update_card(
        source, hub=HubPin("me/vit", "c" * 40, None), to=tmp_path / "out" / "hat-vit-small.yaml"
    )
    assert copy.hub.repo_id == "me/vit" and source.read_text() == VIT_CARD
    with pytest.raises(CardError, match="hub.repo_id"):
        update_card(source, hub=HubPin("no-org", None, None))
    assert source.read_text() == VIT_CARD


# ---------------------------------------------------------------------------- one registry idiom
def test_registry_decorator_order_and_errors() -> None:
    colours: Registry[str] = Registry("colour")
    colours.register("red", "warm")("#f00")
    colours.register("blue")("#00f")
    colours.register("green", first=True)("#0f0")
    assert list(colours) == ["green", "red", "blue"] and colours.get("red") == "#f00"
    assert "red" in colours and "pink" not in colours and colours.help()["red"] == "warm"
    with pytest.raises(hatzoo.InputError, match="unknown colour 'pink'; choose one of green, red, blue"):
        colours.get("pink")
    with pytest.raises(hatzoo.InputError, match="'red' is already registered"):
        colours.register("red")("#e00")


def test_named_choices_share_the_idiom() -> None:
    from hatzoo.architectures import ARCHITECTURES
    from hatzoo.core.schedules import SCHEDULES
    from hatzoo.optimizers import OPTIMIZERS
    from hatzoo.policies import POLICIES

    assert list(ARCHITECTURES)[:3] == ["hat-vit-tiny", "hat-vit-small", "hat-vit-base"]
    assert list(SCHEDULES) == ["linear", "exponential", "cosine", "constant"]
    assert list(POLICIES)[-3:] == ["timm-vit", "timm-resnet", "torch-sequential"]
    assert list(OPTIMIZERS) == ["sgd", "adam", "adamw"]
    with pytest.raises(hatzoo.InputError, match="unknown mask-scale schedule 'step'"):
        hatzoo.schedules.get_schedule("step")


def test_a_registered_policy_is_tried_first() -> None:
    from hatzoo.policies import Policy, find_policy, register_policy

    class Tagged(nn.Sequential):
        pass

    mine = register_policy(Policy("test-tagged", lambda m: isinstance(m, Tagged), lambda m: None))
    assert find_policy(Tagged(nn.Linear(2, 2))) is mine
    assert find_policy(nn.Sequential(nn.Linear(2, 2))).name == "torch-sequential"
