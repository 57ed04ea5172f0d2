"""Fetch a Hub repository (or one file of it) into the huggingface_hub cache, with clear errors.

Settings come from the environment at call time (``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``):
huggingface_hub reads them once at import, which surprises anyone who sets them later in a process.
A dead server is detected with a TCP probe first, so a cached repository still loads at once and an
uncached one fails in milliseconds instead of after about 23 s of retries.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from hatzoo.errors import HubError
from hatzoo.files import sha256_file
from hatzoo.hub._env import endpoint_reachable, hub_cache_dir, hub_endpoint, hub_offline
from hatzoo.repo_ids import is_repo_id

__all__ = ["add_to_snapshot", "cached_snapshot", "hub_file", "is_repo_id", "snapshot", "snapshot_commit"]

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def snapshot_commit(path: str | os.PathLike[str]) -> str | None:
    """The commit sha of a folder that :func:`snapshot` returned (``.../snapshots/<sha>``), else None."""
    p = Path(path)
    if p.parent.name == "snapshots" and _SHA_RE.match(p.name):
        return p.name
    return None


def _where(repo_id: str, revision: str | None) -> str:
    """``org/name@rev`` for messages."""
    return f"{repo_id}@{revision}" if revision else repo_id


def _check_repo_id(repo_id: str) -> None:
    """Refuse something that is neither an existing folder nor a repo id, before any network call."""
    if not is_repo_id(repo_id):
        raise HubError(
            f"{repo_id!r} is neither an existing local folder nor a Hub repo id ('org/name'): check the path "
            "or the repo name"
        )


def _diagnose_missing(api: object, repo_id: str, revision: str | None, filename: str | None) -> HubError:
    """Tell apart a missing repo, revision or file (olah answers 'repository not found' for all three)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        files = api.list_repo_files(repo_id, revision=revision)  # type: ignore[attr-defined]
    except HfHubHTTPError:
        files = None
    if files is not None and filename is not None:
        shown = ", ".join(sorted(files)[:10]) or "no files"
        return HubError(f"{_where(repo_id, revision)} has no file {filename!r} (it has: {shown})")
    if files is not None:  # pragma: no cover - the repo and revision exist; the failure was elsewhere
        return HubError(f"{_where(repo_id, revision)} exists but could not be downloaded; try again")
    try:
        refs = api.list_repo_refs(repo_id)  # type: ignore[attr-defined]
    except HfHubHTTPError:
        refs = None
    if refs is not None and revision is not None:
        names = [b.name for b in refs.branches] + [t.name for t in refs.tags]
        return HubError(
            f"revision {revision!r} not found in {repo_id}: use a branch, tag or commit sha that exists "
            f"(branches and tags: {', '.join(names) or 'none'})"
        )
    return HubError(
        f"repository {repo_id!r} not found at {api.endpoint}: check the name (and HF_ENDPOINT); "  # type: ignore[attr-defined]
        "a private or gated repo needs a token (`hf auth login`)"
    )


def _fetch(
    repo_id_or_path: str | os.PathLike[str],
    revision: str | None,
    filename: str | None,
    allow_patterns: list[str] | str | None,
    endpoint: str | None,
    cache_dir: str | os.PathLike[str] | None,
    token: str | bool | None,
) -> Path:
    """A local folder (or its file) as it is, else the repo (or its file) downloaded into the cache.

    The one path of snapshot() and hub_file(), through the offline, unreachable and online cases.
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    local = Path(repo_id_or_path).expanduser()
    if local.is_dir():
        return _local_folder_or_file(local.resolve(), filename)
    repo_id = str(repo_id_or_path)
    _check_repo_id(repo_id)
    endpoint = hub_endpoint(endpoint)
    cache = hub_cache_dir(cache_dir)
    kwargs = dict(revision=revision, cache_dir=str(cache), endpoint=endpoint, token=token)
    if filename is None:
        download = functools.partial(snapshot_download, repo_id, allow_patterns=allow_patterns, **kwargs)
    else:
        download = functools.partial(hf_hub_download, repo_id, filename, **kwargs)

    offline = hub_offline()
    if offline or not endpoint_reachable(endpoint):  # the cache alone, at once
        return _from_cache(download, _what(repo_id, revision, filename), cache, endpoint, offline)
    return _download(download, repo_id, revision, filename, endpoint, token)


def _what(repo_id: str, revision: str | None, filename: str | None) -> str:
    """``file 'x' of org/name@rev`` or ``repository org/name@rev``, for messages."""
    return f"{f'file {filename!r} of' if filename else 'repository'} {_where(repo_id, revision)}"


def _local_folder_or_file(folder: Path, filename: str | None) -> Path:
    if filename is None:
        return folder
    if not (folder / filename).is_file():
        raise HubError(f"{folder} has no file {filename!r}: is it a folder written by save_pretrained?")
    return folder / filename


def _from_cache(download: Callable[..., str], what: str, cache: Path, endpoint: str, offline: bool) -> Path:
    """What ``download`` finds in the cache alone, or a HubError saying why the Hub was not asked."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(download(local_files_only=True))
    except LocalEntryNotFoundError as err:
        if offline:
            raise HubError(
                f"{what} is not in the local cache {cache} and HF_HUB_OFFLINE is set: run once online "
                "to cache it, or unset HF_HUB_OFFLINE"
            ) from err
        raise HubError(
            f"cannot reach the Hub at {endpoint} and {what} is not in the local cache {cache}: check "
            "HF_ENDPOINT and your network"
        ) from err


def _download(
    download: Callable[..., str],
    repo_id: str,
    revision: str | None,
    filename: str | None,
    endpoint: str,
    token: str | bool | None,
) -> Path:
    """What ``download`` fetches from a reachable Hub; each huggingface_hub failure as a HubError."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(download(local_files_only=False))
    except RevisionNotFoundError as err:
        raise HubError(
            f"revision {revision!r} not found in {repo_id}: use a branch, tag or commit sha that exists"
        ) from err
    except GatedRepoError as err:
        raise HubError(
            f"{repo_id} is gated: request access on its Hub page, then log in with `hf auth login`"
        ) from err
    except RepositoryNotFoundError as err:
        raise _diagnose_missing(HfApi(endpoint=endpoint, token=token), repo_id, revision, filename) from err
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        if any(isinstance(e, OfflineModeIsEnabled) for e in (err, err.__cause__, err.__context__)):
            raise HubError(
                f"cannot download {_where(repo_id, revision)}: huggingface_hub was imported while "
                "HF_HUB_OFFLINE was set and stays offline; unset it before starting Python"
            ) from err
        raise HubError(
            f"could not download {_what(repo_id, revision, filename)} from {endpoint} and it is not cached: "
            f"{err}"
        ) from err
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", "?")
        raise HubError(
            f"the Hub at {endpoint} answered HTTP {status} for {_where(repo_id, revision)}: {err}"
        ) from err


def cached_snapshot(
    repo_id: str, revision: str | None = None, *, cache_dir: str | os.PathLike[str] | None = None
) -> Path | None:
    """The repo's snapshot folder at ``revision`` if the huggingface_hub cache holds it, else None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    _check_repo_id(repo_id)
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=str(hub_cache_dir(cache_dir)), local_files_only=True
        )
    except LocalEntryNotFoundError:
        return None
    return Path(folder)


def snapshot(
    repo_id_or_path: str | os.PathLike[str],
    revision: str | None = None,
    *,
    endpoint: str | None = None,
    allow_patterns: list[str] | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """A local folder holding the repo's files at ``revision`` (branch, tag or commit sha).

    An existing local directory is returned as it is. Otherwise the repo is downloaded into the
    huggingface_hub cache (only ``allow_patterns`` if given) and the snapshot folder is returned; its
    commit sha is :func:`snapshot_commit` of the result. Every failure is a HubError saying what to do.
    """
    return _fetch(repo_id_or_path, revision, None, allow_patterns, endpoint, cache_dir, token)


def hub_file(
    repo_id_or_path: str | os.PathLike[str],
    filename: str,
    revision: str | None = None,
    *,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """The local path of one file of a repo (or of a local folder), downloading it if needed."""
    return _fetch(repo_id_or_path, revision, filename, None, endpoint, cache_dir, token)


def add_to_snapshot(snapshot_folder: Path, filename: str, source: Path) -> None:
    """Put a local file into a cache snapshot the way huggingface_hub does: a blob and a relative link.

    For a file already verified against the revision's pin, so the cache then holds what a download
    of that revision would have put there. The blob is named by its sha256 (the Hub's name for LFS
    files) and written under a temporary name first; where links are not allowed the file is copied.
    """
    blobs = snapshot_folder.parent.parent / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    blob = blobs / sha256_file(source)
    if not blob.is_file():
        partial = blob.with_name(f"{blob.name}.{os.getpid()}.incomplete")
        shutil.copyfile(source, partial)
        os.replace(partial, blob)
    pointer = snapshot_folder / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    staged = pointer.with_name(f".{pointer.name}.{os.getpid()}.incomplete")
    staged.unlink(missing_ok=True)
    try:
        staged.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:
        shutil.copyfile(blob, staged)
    os.replace(staged, pointer)  # a concurrent reader sees no file or the whole one
