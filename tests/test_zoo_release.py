"""Bundled zoo releases: a fresh clone loads zoo models offline, verified, and the embedded Hub serves them.

A tiny HAT model stands in for a zoo release: saved into a temporary zoo folder (``HATZOO_ZOO``) with a
card pinning its deterministic revision and sha256 in a temporary cards folder (``HATZOO_CARDS``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import hatzoo
from hatzoo.card import HubPin
from hatzoo.hub.local_hub import free_port, stop_process
from hatzoo.hub.publish import folder_files, run_git
from hatzoo.hub.release import build_mirror, file_sha256, release_pin, release_revision
from tests.model_support import fresh_env, train_tasks, vit

pytestmark = pytest.mark.integration  # real processes and a real local Hub
NAME = "hat-release-test"
REPO = "test-zoo/hat-release-test"

LOAD = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    import huggingface_hub, timm, hatzoo, hatzoo.loader  # imports are not what is timed
    from safetensors.torch import load_file
    name, refs = sys.argv[1], load_file(sys.argv[2])
    start = time.perf_counter()
    net = hatzoo.load(name, task=1)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        diff = (net(refs["x"]) - refs["logits1"]).abs().max().item()
    assert diff <= 1e-5, diff
    print(f"LOADED {seconds:.2f}")
    """
)


@dataclass(frozen=True)
class Release:
    """A release folder inside a zoo folder, its card folder, and reference logits for task 1."""

    zoo: Path
    folder: Path
    cards: Path
    refs: Path
    revision: str
    sha256: str


def write_card(cards: Path, revision: str | None, sha256: str | None) -> None:
    cards.mkdir(parents=True, exist_ok=True)
    hub = {"repo_id": REPO, "revision": revision, "sha256": sha256}
    (cards / f"{NAME}.yaml").write_text(json.dumps({"name": NAME, "arch": "hat-vit-tiny", "hub": hub}))


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    root = tmp_path_factory.mktemp("release")
    x = torch.randn(4, 1, 16, 16)
    model = train_tasks(vit(), 2, x, seed=7)
    folder = model.save_pretrained(root / "zoo" / NAME)
    with torch.no_grad():
        save_file({"x": x, "logits1": model(x, task=1)}, str(root / "refs.safetensors"))
    revision, digest = release_revision(folder), file_sha256(folder / "model.safetensors")
    write_card(root / "cards", revision, digest)
    return Release(root / "zoo", folder, root / "cards", root / "refs.safetensors", revision, digest)


def run(script: str, env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess:
    """Run a test script in a fresh interpreter with ``env``; its output is captured as text."""
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )


def use(monkeypatch: pytest.MonkeyPatch, cards: Path, zoo: Path) -> None:
    """Point this process's registry and release lookup at these folders (each cards folder never changes)."""
    monkeypatch.setenv("HATZOO_CARDS", str(cards))
    monkeypatch.setenv("HATZOO_ZOO", str(zoo))


# ----------------------------------------------------------------------------------------- resolution order
def test_fresh_process_without_hub_or_cache_loads_the_bundled_release_at_once(release, tmp_path):
    env = fresh_env(tmp_path, HATZOO_CARDS=str(release.cards), HATZOO_ZOO=str(release.zoo))
    done = run(LOAD, env, NAME, release.refs)
    assert done.returncode == 0, done.stderr
    seconds = float(done.stdout.split("LOADED")[1])
    assert seconds < 10.0, f"the bundled release took {seconds} s: did it wait on the network (~23 s)?"
    assert not any((tmp_path / "hf-home").rglob("model.safetensors")), "nothing should be downloaded"


def test_a_named_hub_that_is_down_falls_back_to_the_bundled_release(release, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    use(monkeypatch, release.cards, release.zoo)
    net = hatzoo.load(NAME, task=1)
    refs = load_file(release.refs)
    with torch.no_grad():
        assert (net(refs["x"]) - refs["logits1"]).abs().max().item() <= 1e-5


def test_a_release_that_is_not_the_pinned_one_is_refused(release, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    zoo = tmp_path / "zoo"
    shutil.copytree(release.folder, zoo / NAME)
    weights = zoo / NAME / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight: still a valid file, but not the pinned one
    weights.write_bytes(bytes(data))
    use(monkeypatch, release.cards, zoo)
    with pytest.raises(hatzoo.CheckpointError, match="not the one the card pins"):
        hatzoo.load(NAME, task=1)
    write_card(tmp_path / "unpinned", release.revision, None)
    use(monkeypatch, tmp_path / "unpinned", release.zoo)
    with pytest.raises(hatzoo.CheckpointError, match="pins no sha256"):
        hatzoo.load(NAME, task=1)


def test_without_a_release_the_error_says_how_to_get_them(release, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    (tmp_path / "no-zoo").mkdir()
    use(monkeypatch, release.cards, tmp_path / "no-zoo")
    start = time.perf_counter()
    with pytest.raises(hatzoo.HubError) as err:
        hatzoo.load(NAME)
    assert time.perf_counter() - start < 5.0
    text = str(err.value)
    for needed in ("Hugging Face cache", "no bundled release", "HATZOO_ZOO=<clone>/zoo", "--zoo <clone>/zoo"):
        assert needed in text, text
    with pytest.raises(hatzoo.HubError, match="HATZOO_ZOO=.* is not a folder"):
        use(monkeypatch, release.cards, tmp_path / "missing")
        hatzoo.load(NAME)


def test_hf_endpoint_and_then_the_cache_win_over_the_bundled_release(release, hub_env, tmp_path, monkeypatch):
    use(monkeypatch, release.cards, release.zoo)
    build_mirror(release.zoo, hub_env.hub.mirror_root)
    # a bundled release with other weights would be refused: a successful load did not use it
    tampered = tmp_path / "tampered"
    shutil.copytree(release.folder, tampered / NAME)
    (tampered / NAME / "model.safetensors").write_bytes(b"not the release")
    use(monkeypatch, release.cards, tampered)
    net = hatzoo.load(NAME, task=1)  # from the Hub HF_ENDPOINT names, into the empty cache
    refs = load_file(release.refs)
    with torch.no_grad():
        assert (net(refs["x"]) - refs["logits1"]).abs().max().item() <= 1e-5
    snapshot = hub_env.cache_dir / f"models--{REPO.replace('/', '--')}" / "snapshots" / release.revision
    assert (snapshot / "model.safetensors").is_file()
    env = fresh_env(
        tmp_path,
        HATZOO_CARDS=str(release.cards),
        HATZOO_ZOO=str(tampered),
        HF_HUB_CACHE=str(hub_env.cache_dir),
        HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",  # the Hub is gone: the cache alone serves
    )
    done = run(LOAD, env, NAME, release.refs)
    assert done.returncode == 0, done.stderr


# -------------------------------------------------------------------------------------------- embedded Hub
DOWNLOAD = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    import timm, hatzoo
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file
    name, repo, revision, refs = sys.argv[1], sys.argv[2], sys.argv[3], load_file(sys.argv[4])
    net = hatzoo.load(name, task=1)
    with torch.no_grad():
        assert (net(refs["x"]) - refs["logits1"]).abs().max().item() <= 1e-5
    config = hf_hub_download(repo, "config.json", revision=revision)
    assert f"/snapshots/{revision}/" in config, config
    backbone = timm.create_model(f"hf-hub:{repo}", pretrained=True)
    print("SERVED", type(backbone).__name__)
    """
)


def serve_zoo(zoo: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str, list[str]]:
    """Start README's command ``python -m hatzoo.hub --zoo ZOO``; return it, its endpoint and its output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hatzoo.hub", "--zoo", str(zoo)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        lines.append(line)
        if "export HF_ENDPOINT=" in line:
            return proc, line.split("export HF_ENDPOINT=")[1].strip(), lines
    proc.kill()
    raise AssertionError("the embedded Hub did not start: " + "".join(lines) + proc.stdout.read())


def test_release_revision_is_the_commit_every_mirror_build_makes(release, tmp_path, monkeypatch):
    use(monkeypatch, release.cards, release.zoo)
    first = build_mirror(release.zoo, tmp_path / "one")
    second = build_mirror(release.zoo, tmp_path / "two")
    again = build_mirror(release.zoo, tmp_path / "one")  # rebuilding an existing mirror keeps the commit
    monkeypatch.chdir(release.zoo.parent)
    relative = build_mirror(release.zoo.name, "relative-mirror")  # as in `--zoo zoo`
    assert first == second == again == relative == {NAME: (REPO, release.revision)}
    repo = tmp_path / "two" / "models" / REPO
    log = run_git(["log", "-1", "--format=%H|%an <%ae> %ad|%cn <%ce> %cd|%s", "--date=raw", "main"], repo)
    fixed = "hatzoo <hatzoo@localhost> 946684800 +0000"
    assert log == f"{release.revision}|{fixed}|{fixed}|hatzoo zoo release"
    assert folder_files(repo)[1] == folder_files(release.folder)[1]  # the checkout shows the release's files
    assert release_pin(release.folder, REPO) == HubPin(REPO, release.revision, release.sha256)
    copy = tmp_path / "copy" / "elsewhere"
    shutil.copytree(release.folder, copy)
    assert release_revision(copy) == release.revision  # the folder's name and place do not matter
    (copy / "README.md").write_text("another card\n")
    assert release_revision(copy) != release.revision


def test_embedded_hub_serves_the_zoo_to_hatzoo_huggingface_hub_and_timm(release, tmp_path):
    env = fresh_env(tmp_path, HATZOO_CARDS=str(release.cards))
    proc, endpoint, lines = serve_zoo(release.zoo, env)
    try:
        assert f"{REPO}@{release.revision} (the card pins it)\n" in lines
        (tmp_path / "no-zoo").mkdir()
        client = dict(env, HF_ENDPOINT=endpoint, HATZOO_ZOO=str(tmp_path / "no-zoo"))
        done = run(DOWNLOAD, client, NAME, REPO, release.revision, release.refs)
        assert done.returncode == 0, done.stderr
        assert "SERVED VisionTransformer" in done.stdout
    finally:
        stop_process(proc, grace=30)
    assert proc.returncode == 0
