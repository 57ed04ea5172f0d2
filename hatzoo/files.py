"""File helpers every layer shares; torch-free, so the server uses them too.

``sha256_file`` is the one file digest. ``replacing_folder`` is the one way a folder is written in
place of another: built beside it, then swapped in, so a reader sees the complete old folder or the
complete new one and the old one is never deleted before the new one is in its place.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from hatzoo.errors import InputError

STAGING_SUFFIX = ".tmp"  # a folder being built is named ".<target name>.<random>.tmp" beside its target


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks so large files do not need to fit in memory twice."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextlib.contextmanager
def replacing_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A new empty folder beside ``target`` to fill; when the block ends it takes ``target``'s place.

    The old folder, if any, stays whole until the new one is in place (one atomic exchange on Linux;
    elsewhere the old one is renamed aside just before), and is removed after. If the block raises,
    the new folder is removed and ``target`` is left as it was. Folder entries are fsynced; files are
    the writer's to fsync where it needs them durable.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise InputError(
            f"cannot write the folder {target}: a file has that name; remove it or choose another"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    new = target.with_name(f".{target.name}.{secrets.token_hex(4)}{STAGING_SUFFIX}")
    new.mkdir()
    try:
        yield new
        _fsync_dir(new)
        _swap_in(new, target)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    _fsync_dir(target.parent)


def _swap_in(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``: one atomic exchange on Linux, else rename the old folder aside first."""
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)  # the old folder, now under the temporary name
        return
    old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries durable; skipped where a folder cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
