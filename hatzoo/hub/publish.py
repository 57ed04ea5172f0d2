"""Publish a folder of files (a checkpoint) as one commit of a Hub repository, by git or by HTTP.

Hub repositories are git repositories, so there are two real paths:

* :func:`publish_git` commits into a local mirror (the folder olah serves) or clones and pushes to a git
  remote such as ``https://huggingface.co/<repo_id>``. Real Hub remotes refuse binary files that are not
  in git-lfs, so pushing ``*.safetensors`` / ``*.onnx`` there needs ``git lfs``; a local mirror takes plain
  git (olah serves plain blobs).
* :func:`publish_http` uses the Hub's HTTP upload API (``HfApi.upload_folder``) with a token.

Both replace the repository's files by the folder's files (files not in the folder are removed) and
return the sha of the commit that now holds them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from hatzoo.errors import HubError
from hatzoo.hub._env import endpoint_reachable, hub_endpoint, hub_offline
from hatzoo.hub.local_hub import repo_folder

__all__ = ["LFS_PATTERNS", "publish_git", "publish_http"]

DEFAULT_AUTHOR = ("hatzoo", "hatzoo@localhost")
DEFAULT_MESSAGE = "Upload model with hatzoo"
# Files the Hub only accepts through git-lfs when pushed with git.
LFS_PATTERNS = ("*.safetensors", "*.onnx", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.npz", "*.h5", "*.msgpack")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_REF_RE = re.compile(r"^(?!/)(?!.*(?:\.\.|//|@\{|\.lock$|/$))[A-Za-z0-9._/-]+$")


# ------------------------------------------------------------------------------------------------ helpers
def run_git(
    args: list[str], cwd: Path, *, env: dict[str, str] | None = None, input_text: str | None = None
) -> str:
    """Run one git command; a failure becomes a HubError quoting git's own message."""
    if shutil.which("git") is None:
        raise HubError("git is not installed: install git to publish with git or serve the zoo's releases")
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env,
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        raise HubError(f"git {' '.join(args[:2])} failed in {cwd}: {msg}")
    return proc.stdout.strip()


def write_tree(
    repo: Path, root: Path, files: list[str], env: dict[str, str], mode: Callable[[Path], str] | None = None
) -> str:
    """Store ``files`` (relative to ``root``) in ``repo`` as one tree, through a temporary index; its sha."""
    mode = mode or _mode
    with tempfile.TemporaryDirectory(prefix="hatzoo-index-") as tmp:
        idx_env = dict(env, GIT_INDEX_FILE=str(Path(tmp) / "index"))
        paths = "".join(f"{root / f}\n" for f in files)
        blobs = run_git(["hash-object", "-w", "--no-filters", "--stdin-paths"], repo, input_text=paths)
        entries = "".join(
            f"{mode(root / f)} {sha}\t{f}\n" for f, sha in zip(files, blobs.splitlines(), strict=True)
        )
        run_git(["update-index", "--add", "--index-info"], repo, env=idx_env, input_text=entries)
        return run_git(["write-tree"], repo, env=idx_env)


def git_identity(name: str, email: str, date: str | None = None) -> dict[str, str]:
    """git's author and committer variables for one identity (and, if given, one fixed date)."""
    values = {"NAME": name, "EMAIL": email, "DATE": date}
    return {f"GIT_{role}_{k}": v for role in ("AUTHOR", "COMMITTER") for k, v in values.items() if v}


def _git_env(cwd: Path) -> dict[str, str]:
    """Environment for commits: the user's git identity if configured, else hatzoo's fixed author."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    with contextlib.suppress(HubError):  # git config exits 1 for an unset key
        if run_git(["config", "user.name"], cwd) and run_git(["config", "user.email"], cwd):
            return env
    return env | git_identity(*DEFAULT_AUTHOR)


def folder_files(folder: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """The folder and its files as sorted posix paths relative to it (no .git, no symlinked dirs)."""
    root = Path(folder).absolute()  # git runs in other folders: relative paths would point elsewhere
    if not root.is_dir():
        raise HubError(f"cannot publish {str(root)!r}: not a folder (write one with save_pretrained first)")
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(root).parts
    )
    if not files:
        raise HubError(f"cannot publish {str(root)!r}: the folder is empty")
    return root, files


def _check_names(branch: str, tag: str | None) -> None:
    """Refuse branch and tag names git would reject, before touching any repository."""
    for kind, name in (("branch", branch), ("tag", tag)):
        if name is not None and (not _REF_RE.match(name) or _SHA_RE.match(name)):
            raise HubError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_', '-' or '/'")


def _needs_lfs(files: list[str]) -> list[str]:
    """Files a Hub remote would only accept through git-lfs."""
    return [f for f in files if any(fnmatch.fnmatch(Path(f).name, p) for p in LFS_PATTERNS)]


def _is_local_remote(url: str) -> bool:
    """True for a remote that is a path or file:// URL (plain git suffices); False for http(s)/ssh hosts."""
    return url.startswith("file://") or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://|^[^/]+@[^/]+:", url)


def _rev(repo: Path, ref: str) -> str | None:
    """The commit sha ``ref`` names in ``repo``, or None when there is no such ref."""
    with contextlib.suppress(HubError):
        return run_git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], repo) or None
    return None


def _tag(repo: Path, tag: str, sha: str, env: dict[str, str]) -> None:
    """Create ``tag`` at ``sha``; an existing tag at another commit is an error (tags are immutable)."""
    old = _rev(repo, f"refs/tags/{tag}")
    if old == sha:
        return
    if old is not None:
        raise HubError(f"tag {tag!r} already points at commit {old[:12]} in {repo}; choose a new tag name")
    run_git(["tag", tag, sha], repo, env=env)


# -------------------------------------------------------------------------------------------- git: mirror
def _commit_into_mirror(repo: Path, root: Path, files: list[str], branch: str, message: str) -> str:
    """Commit the folder's files as the whole tree of ``branch``; a repository created here is removed
    again when the commit fails, so a failed publish leaves nothing behind."""
    if (repo / ".git").exists() or (repo / "HEAD").is_file():
        return _commit_tree(repo, root, files, branch, message)
    created = [p for p in (repo, *repo.parents) if not p.exists()]
    try:
        repo.mkdir(parents=True)
        run_git(["init", "-q", "-b", branch], repo)
        return _commit_tree(repo, root, files, branch, message)
    except BaseException:
        shutil.rmtree(repo, ignore_errors=True)
        for folder in created[1:]:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _commit_tree(repo: Path, root: Path, files: list[str], branch: str, message: str) -> str:
    """Commit the files as the whole tree of ``branch`` with git plumbing (works bare or not)."""
    env = _git_env(repo)
    parent = _rev(repo, f"refs/heads/{branch}")
    tree = write_tree(repo, root, files, env)
    if parent is not None and run_git(["rev-parse", f"{parent}^{{tree}}"], repo) == tree:
        return parent  # nothing changed: the branch already holds exactly these files
    sha = run_git(["commit-tree", tree, *(["-p", parent] if parent else []), "-m", message], repo, env=env)
    run_git(["update-ref", f"refs/heads/{branch}", sha, *([parent] if parent else [])], repo)
    _sync_worktree(repo, branch)
    return sha


def _mode(path: Path) -> str:
    """Git file mode of a file to commit."""
    return "100755" if os.access(path, os.X_OK) else "100644"


def _sync_worktree(repo: Path, branch: str) -> None:
    """Make a non-bare mirror's checkout show the new commit when ``branch`` is the one checked out."""
    if run_git(["rev-parse", "--is-bare-repository"], repo) == "true":
        return
    head = ""
    with contextlib.suppress(HubError):
        head = run_git(["symbolic-ref", "-q", "HEAD"], repo)
    if head == f"refs/heads/{branch}":
        run_git(["reset", "-q", "--hard", "HEAD"], repo)


# -------------------------------------------------------------------------------------------- git: remote
def _commit_and_push(
    url: str, root: Path, files: list[str], branch: str, message: str, tag: str | None
) -> str:
    """Clone ``url`` (without LFS payloads), replace the files, commit, and push branch (and tag)."""
    lfs_files = [] if _is_local_remote(url) else _needs_lfs(files)
    if lfs_files and _git_lfs_missing():
        raise HubError(
            f"pushing {', '.join(lfs_files[:3])} to {url} needs git-lfs (the Hub refuses large binary files "
            "in plain git): install git-lfs (https://git-lfs.com, e.g. apt-get install git-lfs), or publish "
            "over HTTP with a token (publish_http), or into a local mirror folder"
        )
    with tempfile.TemporaryDirectory(prefix="hatzoo-push-") as tmp:
        work = Path(tmp) / "repo"
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_LFS_SKIP_SMUDGE="1")
        try:
            run_git(["clone", "-q", "--no-checkout", url, str(work)], Path(tmp), env=env)
        except HubError as err:
            raise HubError(
                f"cannot clone {url}: {err}. Check the URL and your credentials (for the Hugging Face Hub: "
                "create the repo first and log in with `hf auth login`, or put a token in the URL)"
            ) from err
        has_branch = bool(run_git(["ls-remote", "--heads", "origin", branch], work, env=env))
        if has_branch:
            run_git(["checkout", "-q", "-B", branch, f"origin/{branch}"], work, env=env)
        else:
            run_git(["checkout", "-q", "--orphan", branch], work, env=env)
        keep = {".gitattributes"} if lfs_files else set()
        tracked = [t for t in run_git(["ls-files", "-z"], work).split("\0") if t and t not in keep]
        if tracked:
            run_git(["rm", "-q", "-r", "--cached", "--ignore-unmatch", "--", *tracked], work, env=env)
            for t in tracked:
                with contextlib.suppress(FileNotFoundError):
                    (work / t).unlink()
        if lfs_files:
            run_git(["lfs", "install", "--local"], work, env=env)
            run_git(["lfs", "track", *LFS_PATTERNS], work, env=env)
        for f in files:
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / f, work / f)
        run_git(["add", "-A", "--", "."], work, env=env)
        commit_env = _git_env(work)
        if not has_branch or run_git(["status", "--porcelain"], work):  # else the branch holds these files
            run_git(["commit", "-q", "-m", message], work, env=commit_env)
        sha = run_git(["rev-parse", "HEAD"], work)
        refs = [f"HEAD:refs/heads/{branch}"]
        if tag is not None:
            _tag(work, tag, sha, commit_env)
            refs.append(f"refs/tags/{tag}")
        try:
            run_git(["push", "-q", "origin", *refs], work, env=env)
        except HubError as err:
            raise HubError(
                f"the push to {url} was refused: {err}. Pull the branch's newer commits first, or check "
                "your write access"
            ) from err
        return sha


def _git_lfs_missing() -> bool:
    """True when ``git lfs`` is not installed."""
    return subprocess.run(["git", "lfs", "version"], capture_output=True, check=False).returncode != 0


# ---------------------------------------------------------------------------------------------- public API
def publish_git(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    mirror_root: str | os.PathLike[str] | None = None,
    remote_url: str | None = None,
    branch: str = "main",
    message: str = DEFAULT_MESSAGE,
    tag: str | None = None,
) -> str:
    """Commit ``folder``'s files as the whole content of ``repo_id``'s ``branch``; return the commit sha.

    Give exactly one of ``mirror_root`` (a local mirror: the repository ``<mirror_root>/models/<org>/<name>``
    is created with ``git init`` if missing and committed into directly) or ``remote_url`` (any git
    remote; it is cloned and pushed to). Files absent from ``folder`` are removed; publishing identical
    files again returns the existing commit. ``tag`` marks the commit (an existing tag must not move).
    """
    if (mirror_root is None) == (remote_url is None):
        raise HubError("publish_git needs exactly one of mirror_root (a local mirror folder) or remote_url")
    root, files = folder_files(folder)
    _check_names(branch, tag)
    if not message.strip():
        raise HubError("the commit message is empty: give a short description of this revision")
    if remote_url is not None:
        if _is_local_remote(remote_url) and not remote_url.startswith("file://"):
            remote_url = str(Path(remote_url).absolute())  # git clones from a temporary folder
        return _commit_and_push(remote_url, root, files, branch, message, tag)
    repo = repo_folder(Path(mirror_root).absolute(), repo_id)  # type: ignore[arg-type]
    sha = _commit_into_mirror(repo, root, files, branch, message)
    if tag is not None:
        _tag(repo, tag, sha, _git_env(repo))
    return sha


_NO_UPLOAD_API = (
    "this endpoint has no upload API (a read-only mirror such as olah); publish with git instead "
    "(publish_git with mirror_root, or `--git-mirror DIR`)"
)
_NO_WRITE_ACCESS = (
    "the token is missing, invalid or has no write access to this repo; log in with `hf auth login` or "
    "pass token=..."
)
# What to do about an HTTP status the Hub answers an upload with; any other status quotes the error.
_UPLOAD_HELP = dict.fromkeys((404, 405, 501), _NO_UPLOAD_API) | dict.fromkeys((401, 403), _NO_WRITE_ACCESS)


def _http_error(err: Exception, endpoint: str, repo_id: str) -> HubError:
    """Turn a huggingface_hub / httpx failure during upload into a HubError that says what to do."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status is None:
        return HubError(f"uploading {repo_id} to {endpoint} failed: {type(err).__name__}: {err}")
    remedy = _UPLOAD_HELP.get(status, err)
    return HubError(f"the Hub at {endpoint} refused the upload of {repo_id} (HTTP {status}): {remedy}")


def publish_http(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    revision: str = "main",
    message: str = DEFAULT_MESSAGE,
    token: str | None = None,
    endpoint: str | None = None,
    private: bool | None = None,
) -> str:
    """Upload ``folder`` as one commit of ``repo_id`` through the Hub's HTTP API; return the commit sha.

    Creates the repo (and branch ``revision``) if needed and deletes remote files that are not in the
    folder. Needs a token with write access (``token=`` or ``hf auth login``). ``endpoint`` defaults to
    ``HF_ENDPOINT`` as set at call time.
    """
    root, _ = folder_files(folder)
    endpoint = hub_endpoint(endpoint)
    if hub_offline():
        raise HubError(f"cannot upload {repo_id}: HF_HUB_OFFLINE is set; unset it to publish to {endpoint}")
    if not endpoint_reachable(endpoint):
        raise HubError(
            f"cannot reach the Hub at {endpoint} to upload {repo_id}: check the address and your network "
            "(or publish into a local mirror with git)"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
        if revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(root),
            revision=revision,
            commit_message=message,
            delete_patterns="*",
        )
    except OfflineModeIsEnabled as err:
        raise HubError(
            f"cannot upload {repo_id}: huggingface_hub was imported with HF_HUB_OFFLINE set; unset it and "
            "restart Python"
        ) from err
    except Exception as err:  # HfHubHTTPError, OSError, ValueError, and the HTTP stack's transport errors
        raise _http_error(err, endpoint, repo_id) from err
    return str(info.oid)
