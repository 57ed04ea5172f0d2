"""Hub transport against a real olah server and the real huggingface_hub client: publish, fetch, fail."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hatzoo.errors import HATError, HubError
from hatzoo.hub.download import hub_file, snapshot, snapshot_commit
from hatzoo.hub.local_hub import LocalHub, free_port
from hatzoo.hub.publish import publish_git, publish_http, run_git

pytestmark = pytest.mark.integration  # real processes and a real local Hub


def _files(folder: Path) -> list[str]:
    """Relative paths of the files in a folder (the cache snapshot holds symlinks to blobs)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _seed(folder: Path) -> int:
    """The seed a test checkpoint was written with."""
    return json.loads((folder / "config.json").read_text())["seed"]


# ------------------------------------------------------------------------------------------- publish + load
def test_publish_git_then_load_by_branch_tag_and_sha(hub_env, repo_id, make_checkpoint, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", seed=1, extra_files={"sub/notes.txt": "hello"})
    sha = publish_git(ckpt, repo_id, mirror_root=hub_env.hub.mirror_root, message="v1", tag="v1")
    assert len(sha) == 40
    # the mirror is a git working tree whose checkout shows the published files
    repo = hub_env.hub.repo_path(repo_id)
    assert run_git(["rev-parse", "HEAD"], repo) == sha
    assert (repo / "sub" / "notes.txt").read_text() == "hello"

    for revision in (None, "main", "v1", sha, sha[:10]):
        path = snapshot(repo_id, revision)
        assert snapshot_commit(path) == sha, revision
        assert _files(path) == ["README.md", "config.json", "model.safetensors", "sub/notes.txt"]
        assert path.is_relative_to(hub_env.cache_dir)  # HF_HUB_CACHE read at call time
        tensors = load_file(path / "model.safetensors")
        original = load_file(ckpt / "model.safetensors")
        assert tensors["weight"].equal(original["weight"])
    # a local folder passes through untouched
    assert snapshot(ckpt) == ckpt.resolve()
    assert hub_file(ckpt, "config.json") == ckpt.resolve() / "config.json"


def test_second_revision_replaces_files_and_both_stay_loadable(hub_env, repo_id, make_checkpoint, tmp_path):
    mirror = hub_env.hub.mirror_root
    first = make_checkpoint(tmp_path / "a", seed=1, extra_files={"old.txt": "gone later"})
    sha1 = publish_git(first, repo_id, mirror_root=mirror, message="first", tag="v1")
    assert _seed(snapshot(repo_id)) == 1  # caches the ref 'main' -> sha1

    second = make_checkpoint(tmp_path / "b", seed=2)
    sha2 = publish_git(second, repo_id, mirror_root=mirror, message="second", tag="v2")
    assert sha2 != sha1
    # publishing the same files again makes no new commit
    assert publish_git(second, repo_id, mirror_root=mirror, message="again") == sha2

    latest = snapshot(repo_id)  # the branch moved: the new commit is served at once
    assert snapshot_commit(latest) == sha2 and _seed(latest) == 2
    assert "old.txt" not in _files(latest)
    assert not (hub_env.hub.repo_path(repo_id) / "old.txt").exists()
    for revision, expected_sha, seed in (("v1", sha1, 1), (sha1, sha1, 1), ("v2", sha2, 2), (sha2, sha2, 2)):
        path = snapshot(repo_id, revision)
        assert (snapshot_commit(path), _seed(path)) == (expected_sha, seed)
    assert (snapshot(repo_id, "v1") / "old.txt").read_text() == "gone later"

    config = hub_file(repo_id, "config.json", "v1")
    assert json.loads(config.read_text())["seed"] == 1
    only_config = snapshot(repo_id, "v2", allow_patterns=["*.json"], cache_dir=tmp_path / "other-cache")
    assert _files(only_config) == ["config.json"]


def test_publish_to_another_branch_leaves_main_alone(hub_env, repo_id, make_checkpoint, tmp_path):
    mirror = hub_env.hub.mirror_root
    main_sha = publish_git(make_checkpoint(tmp_path / "a", seed=1), repo_id, mirror_root=mirror)
    dev_sha = publish_git(make_checkpoint(tmp_path / "b", seed=2), repo_id, mirror_root=mirror, branch="dev")
    assert snapshot_commit(snapshot(repo_id, "main")) == main_sha
    assert snapshot_commit(snapshot(repo_id, "dev")) == dev_sha
    assert _seed(hub_env.hub.repo_path(repo_id)) == 1  # the checkout stays on main


def test_tags_do_not_move(hub_env, repo_id, make_checkpoint, tmp_path):
    mirror = hub_env.hub.mirror_root
    sha = publish_git(make_checkpoint(tmp_path / "a", seed=1), repo_id, mirror_root=mirror, tag="v1")
    assert publish_git(make_checkpoint(tmp_path / "a", seed=1), repo_id, mirror_root=mirror, tag="v1") == sha
    with pytest.raises(HubError, match="tag 'v1' already points at"):
        publish_git(make_checkpoint(tmp_path / "b", seed=2), repo_id, mirror_root=mirror, tag="v1")


def test_push_to_a_git_remote_served_by_the_hub(hub_env, repo_id, make_checkpoint, tmp_path):
    """remote_url path: clone, commit, push; here the remote is a bare repository that olah serves."""
    bare = hub_env.hub.repo_path(repo_id)
    bare.mkdir(parents=True)
    run_git(["init", "-q", "--bare", "-b", "main"], bare)
    sha1 = publish_git(
        make_checkpoint(tmp_path / "a", seed=1, extra_files={"x.txt": "x"}), repo_id, remote_url=str(bare)
    )
    sha2 = publish_git(make_checkpoint(tmp_path / "b", seed=2), repo_id, remote_url=str(bare), tag="v2")
    assert sha1 != sha2
    assert (snapshot_commit(snapshot(repo_id, "v2")), _seed(snapshot(repo_id))) == (sha2, 2)
    assert "x.txt" in _files(snapshot(repo_id, sha1)) and "x.txt" not in _files(snapshot(repo_id, sha2))


# ------------------------------------------------------------------------------------------------ failures
def test_missing_repo_revision_and_file_are_told_apart(hub_env, repo_id, make_checkpoint, tmp_path):
    publish_git(make_checkpoint(tmp_path / "a"), repo_id, mirror_root=hub_env.hub.mirror_root, tag="v1")
    with pytest.raises(HubError, match=r"repository 'test-org/no-such-repo' not found"):
        snapshot("test-org/no-such-repo")
    with pytest.raises(HubError, match=r"revision 'nope' not found .*branches and tags: main, v1"):
        snapshot(repo_id, "nope")
    with pytest.raises(HubError, match=r"has no file 'missing.bin' \(it has: README.md, config.json"):
        hub_file(repo_id, "missing.bin")
    with pytest.raises(HubError, match="neither an existing local folder nor a Hub repo id"):
        snapshot("not a repo")
    with pytest.raises(HubError, match="has no file 'nothing.json'"):
        hub_file(tmp_path / "a", "nothing.json")


def test_offline_and_not_cached_is_clear(hub_env, repo_id, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub was imported: still honoured
    t0 = time.perf_counter()
    with pytest.raises(HubError, match="not in the local cache .* unset HF_HUB_OFFLINE"):
        snapshot(repo_id)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        hub_file(repo_id, "config.json")
    assert time.perf_counter() - t0 < 2.0


def test_publish_http_fails_cleanly(hub_env, repo_id, make_checkpoint, tmp_path):
    ckpt = make_checkpoint(tmp_path / "a")
    # (b) the real olah server: it has no upload API
    with pytest.raises(HubError, match=r"refused the upload .*\(HTTP 405\).*publish with git"):
        publish_http(ckpt, repo_id, token="hf_test_token_not_real")
    # (a) nothing listening: fails at once, no retry storm
    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(HubError, match=f"cannot reach the Hub at {dead}"):
        publish_http(ckpt, repo_id, endpoint=dead, token="hf_test_token_not_real")
    assert time.perf_counter() - t0 < 2.0


def test_bad_publish_inputs(tmp_path, make_checkpoint):
    ckpt = make_checkpoint(tmp_path / "a")
    mirror = tmp_path / "mirror"
    (tmp_path / "empty").mkdir()
    cases = [
        (dict(folder=tmp_path / "none", mirror_root=mirror), "not a folder"),
        (dict(folder=tmp_path / "empty", mirror_root=mirror), "the folder is empty"),
        (dict(folder=ckpt), "exactly one of mirror_root"),
        (dict(folder=ckpt, mirror_root=mirror, remote_url="x"), "exactly one of mirror_root"),
        (dict(folder=ckpt, mirror_root=mirror, branch="bad..name"), "invalid branch name"),
        (dict(folder=ckpt, mirror_root=mirror, tag="a b"), "invalid tag name"),
        (dict(folder=ckpt, mirror_root=mirror, message="  "), "commit message is empty"),
    ]
    for kwargs, message in cases:
        folder = kwargs.pop("folder")
        with pytest.raises(HubError, match=message):
            publish_git(folder, "org/name", **kwargs)
    with pytest.raises(HubError, match="invalid repo id"):
        publish_git(ckpt, "no-slash", mirror_root=mirror)
    assert not mirror.exists() or not any(mirror.rglob("*.safetensors"))


@pytest.mark.skipif(shutil.which("git-lfs") is not None, reason="git-lfs is installed here")
def test_pushing_binaries_to_a_hub_remote_needs_git_lfs(tmp_path, make_checkpoint):
    with pytest.raises(HubError, match="needs git-lfs"):
        publish_git(make_checkpoint(tmp_path / "a"), "org/name", remote_url="https://huggingface.co/org/name")


# ------------------------------------------------------------------------------ server lifecycle + offline
def test_cache_serves_after_the_server_stops_even_in_a_fresh_offline_process(
    repo_id, make_checkpoint, tmp_path, monkeypatch
):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with LocalHub(tmp_path / "mirror") as hub:
        endpoint, pid = hub.endpoint, hub.pid
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        sha1 = publish_git(
            make_checkpoint(tmp_path / "a", seed=1), repo_id, mirror_root=hub.mirror_root, tag="v1"
        )
        sha2 = publish_git(make_checkpoint(tmp_path / "b", seed=2), repo_id, mirror_root=hub.mirror_root)
        snapshot(repo_id, "v1")
        snapshot(repo_id)  # main
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped: nothing left behind

    # same process, server gone, not offline: cached refs load at once, uncached ones fail at once
    t0 = time.perf_counter()
    assert snapshot_commit(snapshot(repo_id)) == sha2
    with pytest.raises(HubError, match="cannot reach the Hub at .* not in the local cache"):
        snapshot(repo_id, "other-branch")
    assert time.perf_counter() - t0 < 2.0

    # a fresh interpreter with HF_HUB_OFFLINE=1 set before huggingface_hub is imported
    script = textwrap.dedent(
        f"""
        import json
        from hatzoo.errors import HubError
        from hatzoo.hub.download import snapshot, snapshot_commit
        out = {{rev: snapshot_commit(snapshot({repo_id!r}, rev)) for rev in ("main", "v1", {sha1!r})}}
        out["seed"] = json.load(open(snapshot({repo_id!r}) / "config.json"))["seed"]
        try:
            snapshot({repo_id!r}, "never-fetched")
        except HubError as err:
            out["error"] = str(err)
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_ENDPOINT=endpoint)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (out["main"], out["v1"], out[sha1], out["seed"]) == (sha2, sha1, sha1, 2)
    assert "unset HF_HUB_OFFLINE" in out["error"]


def test_local_hub_refuses_a_busy_port_and_cleans_up(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        hub = LocalHub(tmp_path / "mirror", port=busy)
        with pytest.raises(HubError, match=f"port {busy} on 127.0.0.1 is already in use"):
            hub.start()
    assert not hub.running
    with pytest.raises(HATError, match="not running"):
        _ = hub.endpoint


def test_local_hub_startup_failure_shows_olahs_log(tmp_path, monkeypatch):
    """A server that dies at startup gives a HubError with the tail of its log, and no process remains."""
    fake = tmp_path / "fake-python"  # prints an error and exits, standing in for a broken olah install
    fake.write_text("#!/bin/sh\necho 'fake olah: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    hub = LocalHub(tmp_path / "mirror", startup_timeout=5)
    with pytest.raises(HubError, match=r"exited at startup \(code 3\)(.|\n)*fake olah: cannot start"):
        hub.start()
    assert not hub.running


def test_hub_env_also_steers_plain_huggingface_hub_calls(hub_env, repo_id, make_checkpoint, tmp_path):
    """Third-party loaders call huggingface_hub without endpoint/cache arguments: hub_env covers them too."""
    from huggingface_hub import HfApi, hf_hub_download

    sha = publish_git(make_checkpoint(tmp_path / "a", seed=7), repo_id, mirror_root=hub_env.hub.mirror_root)
    path = Path(hf_hub_download(repo_id, "config.json"))
    assert path.is_relative_to(hub_env.cache_dir) and json.loads(path.read_text())["seed"] == 7
    assert HfApi().model_info(repo_id, revision="main").sha == sha
