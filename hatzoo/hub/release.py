"""The zoo's bundled releases: ``zoo/<name>/`` folders in Hub layout that travel with the repository.

A release folder is found in ``HATZOO_ZOO`` (a folder of release folders) or else in the checkout's
``zoo/``. Wherever a release comes from (the Hugging Face cache, a Hub, a bundled folder), every file is
checked against its card before use (:func:`check_release`): against the sha256 of each file the card
lists (``files``: a changed file is named, a missing one can be fetched from another source); for cards
without that list, against the pinned sha256 of model.safetensors and, for a bundled folder, the pinned
revision recomputed from the files.

Each release folder also maps to one git commit whose sha depends on its files alone (no parent, fixed
author, committer, dates and message, every file mode 100644), so every machine computes the same
revision: :func:`release_revision` computes it without git, the card pins it (:func:`release_pin`), and
:func:`build_mirror` commits the releases into a mirror that the embedded Hub (olah) serves at exactly
that revision.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from hatzoo.card import Card, HubPin
from hatzoo.errors import CheckpointError, HubError
from hatzoo.files import sha256_file as file_sha256
from hatzoo.hub.local_hub import repo_folder
from hatzoo.hub.publish import folder_files, git_identity, run_git, write_tree

__all__ = [
    "ZOO_ENV",
    "build_mirror",
    "check_release",
    "file_sha256",
    "release_folder",
    "release_names",
    "release_files",
    "release_pin",
    "release_revision",
    "verify_sha256",
    "zoo_dir",
]

ZOO_ENV = "HATZOO_ZOO"
WEIGHTS = "model.safetensors"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
RELEASE_IDENTITY = ("hatzoo", "hatzoo@localhost")
RELEASE_DATE = "946684800 +0000"  # 2000-01-01T00:00:00Z
RELEASE_MESSAGE = "hatzoo zoo release\n"
GET_RELEASES = (
    "the releases ship in the zoo/ folder of the hatzoo git repository: run from a clone of it, or set "
    f"{ZOO_ENV}=<clone>/zoo, or serve that folder with `python -m hatzoo.hub --zoo <clone>/zoo` and set "
    "HF_ENDPOINT to the address it prints"
)


# ----------------------------------------------------------------------------------------- finding releases
def zoo_dir() -> Path | None:
    """The folder of release folders: ``HATZOO_ZOO`` if set, else the checkout's ``zoo/`` if there is one."""
    configured = os.environ.get(ZOO_ENV)
    if configured:
        folder = Path(configured).expanduser()
        if not folder.is_dir():
            raise HubError(f"{ZOO_ENV}={configured} is not a folder: point it at a zoo folder, or unset it")
        return folder.resolve()
    checkout = Path(__file__).resolve().parents[2] / "zoo"
    return checkout if checkout.is_dir() else None


def release_names(zoo: str | os.PathLike[str]) -> list[str]:
    """The names of the release folders in a zoo folder (those holding a model.safetensors), sorted."""
    return sorted(p.name for p in Path(zoo).iterdir() if (p / WEIGHTS).is_file())


def release_folder(name: str) -> Path | None:
    """The bundled release folder of zoo model ``name``, or None when this installation has none."""
    zoo = zoo_dir()
    if zoo is None or not (zoo / name / WEIGHTS).is_file():
        return None
    return zoo / name


def verify_sha256(folder: Path, expected: str | None, name: str, remedy: str) -> None:
    """Refuse a folder whose model.safetensors does not have the sha256 the zoo card of ``name`` pins."""
    if expected:
        _verify_file(folder, WEIGHTS, expected, name, remedy)


def _verify_file(folder: Path, file: str, expected: str, name: str, remedy: str) -> None:
    actual = file_sha256(folder / file)
    if actual != expected:
        raise CheckpointError(
            f"{folder / file} has sha256 {actual[:16]}..., but the zoo card of {name} pins "
            f"{expected[:16]}... for {file}: {remedy}"
        )


def check_release(folder: Path, card: Card, remedy: str, *, bundled: bool = False) -> list[str]:
    """Check the files of zoo model ``card.name`` in ``folder`` against its card; returns the missing ones.

    Each file the card lists must have its sha256 (a mismatch is a CheckpointError naming the file);
    files it does not list are not read by the loader and are ignored. A card without a file list is
    checked by its pinned sha256 of model.safetensors and, for a ``bundled`` release folder, by its
    pinned commit recomputed from the files (a commit pushed to a Hub by other means has another sha).
    """
    if card.files:
        missing = [f for f in card.files if not (folder / f).is_file()]
        for file, digest in card.files.items():
            if file not in missing:
                _verify_file(folder, file, digest, card.name, remedy)
        return missing
    from hatzoo.checkpoint import required_files  # torch: only when a release is loaded

    if missing := [f for f in required_files(folder) if not (folder / f).is_file()]:
        return missing
    verify_sha256(folder, card.hub.sha256, card.name, remedy)
    revision = card.hub.revision or ""
    if bundled and _COMMIT.match(revision) and release_revision(folder) != revision:
        raise CheckpointError(
            f"the files of {folder} do not make the commit {revision} the zoo card of {card.name} pins "
            f"(its {WEIGHTS} does have the pinned sha256, so another file was changed, added or removed): "
            f"{remedy}"
        )
    return []


# ------------------------------------------------------------------------------------ deterministic revision
def _git_object(kind: str, body: bytes) -> bytes:
    """The binary sha-1 git gives an object of this kind and content."""
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body, usedforsecurity=False).digest()


def _blob_sha(path: Path) -> bytes:
    """git's blob id of a file, streamed."""
    header = f"blob {path.stat().st_size}\0".encode()
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.sha1(header, usedforsecurity=False)).digest()


def _tree_sha(folder: Path, files: list[str]) -> bytes:
    """git's tree id for these files (regular files, mode 100644), built level by level."""
    children: dict[str, list[str]] = {}
    entries: list[tuple[str, bytes, bytes]] = []
    for f in files:
        head, _, rest = f.partition("/")
        if rest:
            children.setdefault(head, []).append(rest)
        else:
            entries.append((head, b"100644", _blob_sha(folder / f)))
    for sub, sub_files in children.items():
        entries.append((sub + "/", b"40000", _tree_sha(folder / sub, sub_files)))
    body = b"".join(
        mode + b" " + name.rstrip("/").encode() + b"\0" + sha for name, mode, sha in sorted(entries)
    )
    return _git_object("tree", body)


def _release_files(folder: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    root = Path(folder).resolve()  # git runs in the mirror repository, not here
    if not (root / WEIGHTS).is_file():
        raise HubError(f"{root} is not a zoo release: it has no {WEIGHTS} (write it with save_pretrained)")
    return folder_files(root)


def release_revision(folder: str | os.PathLike[str]) -> str:
    """The commit sha that a release folder gets in the embedded Hub: pin it as the card's revision."""
    root, files = _release_files(folder)
    who = "{} <{}> {}".format(*RELEASE_IDENTITY, RELEASE_DATE)
    text = f"tree {_tree_sha(root, files).hex()}\nauthor {who}\ncommitter {who}\n\n{RELEASE_MESSAGE}"
    return _git_object("commit", text.encode()).hex()


def release_files(folder: str | os.PathLike[str]) -> dict[str, str]:
    """The card's ``files`` for a release folder: the sha256 of each file, by relative path."""
    root, files = _release_files(folder)
    return {f: file_sha256(root / f) for f in files}


def release_pin(folder: str | os.PathLike[str], repo_id: str) -> HubPin:
    """The card's hub pin for a release folder: ``update_card(card, hub=release_pin(folder, repo_id))``."""
    root, _ = _release_files(folder)
    return HubPin(repo_id=repo_id, revision=release_revision(root), sha256=file_sha256(root / WEIGHTS))


# ------------------------------------------------------------------------------------------------- mirror
def _commit_release(folder: Path, repo: Path) -> str:
    """Commit a release folder as the root commit of ``repo``'s main branch and check out its files."""
    root, files = _release_files(folder)
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        run_git(["init", "-q", "--object-format=sha1", "-b", "main"], repo)
    env = dict(os.environ, **git_identity(*RELEASE_IDENTITY, RELEASE_DATE))
    tree = write_tree(repo, root, files, env, mode=lambda _: "100644")
    sha = run_git(["commit-tree", "--no-gpg-sign", tree], repo, env=env, input_text=RELEASE_MESSAGE)
    run_git(["update-ref", "refs/heads/main", sha], repo)
    run_git(["symbolic-ref", "HEAD", "refs/heads/main"], repo)
    run_git(["reset", "-q", "--hard", "main"], repo)
    return sha


def build_mirror(zoo: str | os.PathLike[str], mirror: str | os.PathLike[str]) -> dict[str, tuple[str, str]]:
    """Commit each release in ``zoo`` into ``mirror`` as ``models/<org>/<name>`` (the card's repo_id).

    Returns ``{name: (repo_id, revision)}``; each revision equals :func:`release_revision` of its folder,
    on any machine, so the cards' pins resolve against the mirror once :class:`LocalHub` serves it.
    """
    from hatzoo.zoo import default_zoo

    zoo = Path(zoo)
    if not zoo.is_dir():
        raise HubError(f"the zoo folder {zoo} does not exist: point --zoo at the checkout's zoo/ folder")
    names = release_names(zoo)
    if not names:
        raise HubError(f"{zoo} holds no zoo release (folders with a {WEIGHTS})")
    cards = default_zoo()
    built: dict[str, tuple[str, str]] = {}
    for name in names:
        if name not in cards:
            raise HubError(
                f"{zoo / name} has no zoo card: add cards/{name}.yaml (its hub.repo_id names the repository)"
            )
        repo_id = cards.get_card(name).hub.repo_id
        sha = _commit_release(zoo / name, repo_folder(mirror, repo_id))
        expected = release_revision(zoo / name)
        if sha != expected:
            raise HubError(f"git committed {name} as {sha}, not the release revision {expected}; report this")
        built[name] = (repo_id, sha)
    return built
