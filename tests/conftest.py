"""Shared pytest fixtures: a real local Hub (olah) and an isolated huggingface_hub environment.

``local_hub`` (session) is one olah server on 127.0.0.1 over a temporary mirror: publish into it with
``publish_git(folder, repo_id, mirror_root=local_hub.mirror_root)``, with a fresh ``repo_id`` per test.
``hub_env`` points huggingface_hub at it for one test (environment and ``huggingface_hub.constants``,
which the library reads once at import, so timm's ``hf-hub:`` follows too) with a fresh cache folder.
``make_checkpoint(folder, seed=0, extra_files=None)`` writes a tiny checkpoint-like folder.
``bundles`` (session) are the two tiny serving bundles of tests/serving_support.py (tiny-cnn with tasks 0,1,2
and tiny-mlp with tasks 0,5), ``bundle`` the first, ``reference`` runs their graphs directly on ONNX Runtime.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hatzoo.hub.local_hub import LocalHub
from tests.serving_support import Reference, build_bundles

_counter = itertools.count()


@dataclass(frozen=True)
class HubEnv:
    """What ``hub_env`` set up: the server, its endpoint, and the isolated cache folder."""

    hub: LocalHub
    endpoint: str
    cache_dir: Path


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    """A real olah server over a temporary mirror, for the whole session."""
    mirror = tmp_path_factory.mktemp("hub-mirror")
    with LocalHub(mirror) as hub:
        yield hub


@pytest.fixture
def hub_env(local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEnv]:
    """HF_ENDPOINT -> the local hub, HF_HUB_CACHE -> a fresh tmp folder, online; env and constants alike."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    endpoint = local_hub.endpoint
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield HubEnv(hub=local_hub, endpoint=endpoint, cache_dir=cache)


@pytest.fixture
def repo_id(request: pytest.FixtureRequest) -> str:
    """A repo id no other test uses."""
    name = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name).strip("-")[:60]
    return f"test-org/{name}-{next(_counter)}"


def write_checkpoint(folder: Path, seed: int = 0, extra_files: dict[str, str] | None = None) -> Path:
    """Write a tiny folder shaped like a hatzoo checkpoint (safetensors + config + card)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    save_file(
        {"weight": torch.randn(4, 3, generator=gen)},
        folder / "model.safetensors",
        metadata={"seed": str(seed)},
    )
    (folder / "config.json").write_text(json.dumps({"seed": seed, "format": "test"}, indent=2))
    (folder / "README.md").write_text(
        f"---\nlibrary_name: hatzoo\ntags: [test]\n---\n# test checkpoint {seed}\n"
    )
    for name, text in (extra_files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def make_checkpoint() -> Callable[..., Path]:
    """A factory for tiny checkpoint-like folders (see write_checkpoint)."""
    return write_checkpoint


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The two serving test bundles, exported once per session (tests copy them before changing them)."""
    return build_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="session")
def bundle(bundles: list[Path]) -> Path:
    """The tiny-cnn bundle (tasks 0, 1, 2)."""
    return bundles[0]


@pytest.fixture(scope="session")
def reference(bundles: list[Path]) -> Reference:
    return Reference(bundles)
