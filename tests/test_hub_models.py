"""Publish HAT models to a real local Hub (olah), load them in fresh processes, keep training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import hatzoo
from hatzoo.hub.local_hub import LocalHub
from hatzoo.hub.release import file_sha256
from tests.model_support import fresh_env, train_tasks, vit

pytestmark = pytest.mark.integration  # real processes and a real local Hub
LOAD_AND_COMPARE = textwrap.dedent(
    """
    import sys, torch, hatzoo
    from safetensors.torch import load_file
    target, revision, refs_path, ntasks = sys.argv[1], sys.argv[2] or None, sys.argv[3], int(sys.argv[4])
    refs = load_file(refs_path)
    x = refs["x"]
    full = hatzoo.load(target, revision=revision)
    assert isinstance(full, hatzoo.HATModel) and full.num_tasks == ntasks, full.num_tasks
    with torch.no_grad():
        for t in range(ntasks):
            assert torch.equal(full(x, task=t), refs[f"logits{t}"]), f"full model task {t} differs"
            net = hatzoo.load(target, task=t, revision=revision)
            diff = (net(x) - refs[f"logits{t}"]).abs().max().item()
            assert diff <= 1e-5, f"task model {t} differs by {diff}"
    print("LOADED", ntasks)
    """
)


def run_fresh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LOAD_AND_COMPARE, *args], env=env, capture_output=True, text=True, timeout=300
    )


def references(model: hatzoo.HATModel, x: torch.Tensor, path: Path) -> Path:
    with torch.no_grad():
        tensors = {f"logits{t}": model(x, task=t) for t in range(model.num_tasks)}
    save_file({"x": x, **tensors}, str(path))
    return path


def test_publish_with_git_load_in_fresh_process_then_offline(tmp_path):
    x = torch.randn(6, 1, 16, 16)
    model = train_tasks(vit(), 3, x)
    refs = references(model, x, tmp_path / "refs.safetensors")
    cache = tmp_path / "hf-cache"
    with LocalHub(tmp_path / "mirror") as hub:
        sha = model.push_to_hub("zoo/hat-vit-test", git_mirror=hub.mirror_root, commit_message="three tasks")
        assert len(sha) == 40
        env = fresh_env(tmp_path, HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(cache))
        args = ("zoo/hat-vit-test", "", str(refs), "3")
        online = run_fresh(env, *args)
        assert online.returncode == 0, online.stderr
    assert not hub.running
    offline = run_fresh({**env, "HF_HUB_OFFLINE": "1"}, *args)
    assert offline.returncode == 0, offline.stderr
    assert "LOADED 3" in offline.stdout


def test_continue_training_from_the_hub_and_publish_a_new_revision(local_hub, hub_env, repo_id, tmp_path):
    x = torch.randn(6, 1, 16, 16)
    first = train_tasks(vit(), 3, x, seed=1)
    sha1 = first.push_to_hub(repo_id, git_mirror=local_hub.mirror_root, tag="v1")
    published = hatzoo.load(repo_id)
    with torch.no_grad():
        before = {t: published(x, task=t) for t in range(3)}
    # two new tasks with AdamW (weight decay) on the restored model: published tasks must not move
    train_tasks(published, 2, x, seed=2)
    with torch.no_grad():
        for t in range(3):
            assert torch.equal(published(x, task=t), before[t])
    sha2 = published.push_to_hub(repo_id, git_mirror=local_hub.mirror_root, commit_message="two more tasks")
    assert sha2 != sha1
    refs = references(published, x, tmp_path / "refs.safetensors")
    old = hatzoo.load(repo_id, revision="v1")
    new = hatzoo.load(repo_id, revision=sha2)
    assert (old.num_tasks, new.num_tasks) == (3, 5)
    latest = hatzoo.load(repo_id)
    assert latest.num_tasks == 5
    refs_t = load_file(refs)
    with torch.no_grad():
        for t in range(3):
            assert torch.equal(old(x, task=t), before[t])
        for t in range(5):
            assert torch.equal(new(x, task=t), refs_t[f"logits{t}"])


def test_zoo_name_resolves_through_cards(local_hub, hub_env, repo_id, tmp_path, monkeypatch):
    x = torch.randn(4, 1, 16, 16)
    model = train_tasks(vit(), 2, x, seed=3)
    sha = model.push_to_hub(repo_id, git_mirror=local_hub.mirror_root)
    digest = file_sha256(hatzoo.hub.snapshot(repo_id, sha) / "model.safetensors")
    cards = tmp_path / "cards"
    cards.mkdir()
    card = {
        "name": "hat-test",
        "arch": "hat-vit-tiny",
        "hub": {"repo_id": repo_id, "revision": sha, "sha256": digest},
    }
    (cards / "hat-test.yaml").write_text(json.dumps(card))
    monkeypatch.setenv("HATZOO_CARDS", str(cards))
    assert "hat-test" in hatzoo.list_models()
    net = hatzoo.load("hat-test", task=1)
    with torch.no_grad():
        assert (net(x) - model(x, task=1)).abs().max().item() <= 1e-5
    card["hub"]["sha256"] = "0" * 64
    (cards / "hat-test.yaml").write_text(json.dumps(card))
    monkeypatch.setenv("HATZOO_CARDS", str(cards) + os.pathsep)  # a new registry reads the changed card
    with pytest.raises(hatzoo.CheckpointError, match="sha256"):
        hatzoo.load("hat-test")


def test_timm_alone_loads_backbone_weights_from_the_hub(local_hub, hub_env, repo_id):
    x = torch.randn(4, 1, 16, 16)
    model = train_tasks(vit(), 2, x, seed=4)
    model.push_to_hub(repo_id, git_mirror=local_hub.mirror_root)
    backbone = timm.create_model(f"hf-hub:{repo_id}", pretrained=True)
    assert torch.equal(backbone.patch_embed.proj.weight, model.backbone.patch_embed.proj.weight)
    assert torch.equal(backbone.blocks[1].mlp.fc1.weight, model.backbone.blocks[1].mlp.fc1.weight)


def test_bad_names_repos_revisions_and_corrupted_cache(local_hub, hub_env, repo_id):
    with pytest.raises(hatzoo.HubError, match="known zoo models"):
        hatzoo.load("hat-does-not-exist")
    with pytest.raises(hatzoo.HubError, match="not found"):
        hatzoo.load("nobody/no-such-repo")
    x = torch.randn(4, 1, 16, 16)
    model = train_tasks(vit(), 2, x, seed=5)
    model.push_to_hub(repo_id, git_mirror=local_hub.mirror_root)
    with pytest.raises(hatzoo.HubError, match="revision"):
        hatzoo.load(repo_id, revision="no-such-branch")
    with pytest.raises(hatzoo.TaskError, match="task 4 does not exist"):
        hatzoo.load(repo_id, task=4)
    # corrupt the cached weights: the blob behind the snapshot's symlink
    weights = hatzoo.hub.snapshot(repo_id) / "model.safetensors"
    blob = weights.resolve()
    blob.write_bytes(blob.read_bytes()[:100])
    with pytest.raises(hatzoo.CheckpointError, match="truncated or corrupted"):
        hatzoo.load(repo_id)


def test_http_publishing_fails_cleanly_without_an_upload_api(local_hub, hub_env, repo_id):
    model = vit()
    model.end_task(model.add_task(num_classes=2))
    with pytest.raises(hatzoo.HubError, match="publish with git"):
        model.push_to_hub(repo_id)  # olah serves downloads only


def test_a_misspelled_publishing_option_fails_before_anything_is_saved(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where push_to_hub would save
    model = vit()
    model.end_task(model.add_task(num_classes=2))
    with pytest.raises(hatzoo.InputError, match="'revison'; its options are card, revision, commit_message"):
        model.push_to_hub("org/name", revison="v2")
    assert list(tmp_path.iterdir()) == []
