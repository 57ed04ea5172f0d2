"""The zoo registry: cards parsed from a folder, names resolved to Hub repos or local folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from hatzoo import registry
from hatzoo.errors import HATError, HubError
from hatzoo.registry import Registry, ZooEntry, parse_card

VIT_CARD = """\
name: hat-vit-small
arch: hat_vit_small_patch16_224
model_args: {img_size: 32, patch_size: 4, in_chans: 1}
hub: {repo_id: hatzoo/hat-vit-small, revision: main, sha256: null}
description: A HAT ViT-S.
benchmark: {name: split-fmnist, tasks: 5}
results: {acc: [0.9, 0.8]}
"""

RESNET_CARD = """\
name: hat-resnet18
arch: hat_resnet18
hub:
  repo_id: hatzoo/hat-resnet18
  revision: v1.0
  sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
"""


@pytest.fixture
def cards(tmp_path: Path) -> Path:
    """A cards folder with two zoo models and files the registry must ignore."""
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "hat-vit-small.yaml").write_text(VIT_CARD)
    (folder / "hat-resnet18.yml").write_text(RESNET_CARD)
    (folder / "hat-vit-small.md").write_text("---\nlibrary_name: hatzoo\n---\n# the Hub README\n")
    (folder / "__init__.py").write_text("")
    (folder / "drafts").mkdir()
    (folder / "drafts" / "broken.yaml").write_text("name: [")
    return folder


def test_list_and_get(cards: Path) -> None:
    reg = Registry(cards)
    assert reg.list_models() == ["hat-resnet18", "hat-vit-small"]
    assert "hat-vit-small" in reg and "nope" not in reg
    vit = reg.get_card("hat-vit-small")
    assert vit == ZooEntry(
        name="hat-vit-small",
        arch="hat_vit_small_patch16_224",
        model_args={"img_size": 32, "patch_size": 4, "in_chans": 1},
        repo_id="hatzoo/hat-vit-small",
        revision="main",
        sha256=None,
        description="A HAT ViT-S.",
    )
    assert vit.raw["benchmark"] == {"name": "split-fmnist", "tasks": 5}  # training keys kept, not interpreted
    resnet = reg.get_card("hat-resnet18")
    assert (resnet.model_args, resnet.revision, resnet.sha256[:8]) == ({}, "v1.0", "9f86d081")
    with pytest.raises(
        HubError, match="'nope' is not a zoo model; known zoo models: hat-resnet18, hat-vit-small"
    ):
        reg.get_card("nope")


def test_resolve(cards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    reg = Registry(cards)
    assert reg.resolve("hat-vit-small") == ("hatzoo/hat-vit-small", "main")
    assert reg.resolve("hat-resnet18") == ("hatzoo/hat-resnet18", "v1.0")
    assert reg.resolve("hat-resnet18", revision="abc123") == ("hatzoo/hat-resnet18", "abc123")
    assert reg.resolve("someone/their-model") == ("someone/their-model", None)
    assert reg.resolve("someone/their-model", "v2") == ("someone/their-model", "v2")
    local = tmp_path / "saved"
    local.mkdir()
    assert reg.resolve(local) == (str(local.resolve()), None)
    assert reg.resolve("saved") == (str(local.resolve()), None)  # relative folder
    (tmp_path / "hat-vit-small").mkdir()  # a local folder wins over a zoo name, as in from_pretrained
    assert reg.resolve("hat-vit-small") == (str((tmp_path / "hat-vit-small").resolve()), None)
    with pytest.raises(
        HubError, match="'vit-tiny' is not a zoo model.*known zoo models: hat-resnet18, hat-vit-small"
    ):
        reg.resolve("vit-tiny")
    with pytest.raises(HubError, match="the folder './missing/dir' does not exist"):
        reg.resolve("./missing/dir")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [unclosed", "invalid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("arch: x\nhub: {repo_id: a/b}\n", "'name' must be a non-empty string"),
        ("name: m\nhub: {repo_id: a/b}\n", "'arch' must be a non-empty string"),
        ("name: m\narch: x\n", "'hub' must be a mapping with a 'repo_id'"),
        ("name: m\narch: x\nhub: {repo_id: not-a-repo}\n", "is not of the form 'org/name'"),
        ("name: m\narch: x\nmodel_args: [1]\nhub: {repo_id: a/b}\n", "'model_args' must be a mapping"),
        ("name: m\narch: x\nhub: {repo_id: a/b, revision: 3}\n", "hub.revision must be a string"),
    ],
)
def test_malformed_cards_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "m.yaml").write_text(text)
    with pytest.raises(HATError, match=rf"zoo card .*m\.yaml is malformed: .*{message}"):
        Registry(folder).list_models()
    with pytest.raises(HATError, match=message):
        parse_card(text, "m.yaml")


def test_name_must_match_file_and_be_unique(tmp_path: Path) -> None:
    folder = tmp_path / "cards"
    folder.mkdir()
    (folder / "other.yaml").write_text(VIT_CARD)
    with pytest.raises(HATError, match=r"other\.yaml is malformed: its name 'hat-vit-small' differs"):
        Registry(folder).list_models()
    with pytest.raises(HATError, match="cards folder .* does not exist"):
        Registry(tmp_path / "nowhere").list_models()


def test_default_registry_reads_the_shipped_cards() -> None:
    """The module-level API reads the shipped cards: hatzoo.cards when installed, else the repo's cards/."""
    cards_dir = registry.default_cards_dir()
    names = registry.list_models(include_demos=True)
    expected = sorted(
        p.name.rsplit(".", 1)[0] for p in cards_dir.iterdir() if p.name.endswith((".yaml", ".yml"))
    )
    assert names == expected
    assert {"hat-vit-small", "hat-vit-tiny", "hat-resnet18"} <= set(registry.list_models())
    assert "hat-vit-demo" not in registry.list_models()  # a demo recipe, not a zoo model
    for name in names:
        card = registry.get_card(name)
        assert registry.resolve(name)[0] == card.repo_id
