"""Importing hatzoo changes nothing process-wide, and what the runtime makes on first use it removes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run(code: str, tmp_path: Path) -> str:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_hatzoo_installs_no_finder_and_imports_no_torch(tmp_path: Path) -> None:
    out = run(
        """
        import sys
        finders = list(sys.meta_path)
        import hatzoo, hatzoo.export.runtime
        print(sys.meta_path == finders, [m for m in ("torch", "timm") if m in sys.modules])
        """,
        tmp_path,
    )
    assert out.split() == ["True", "[]"]


def test_timm_learns_the_zoo_architectures_when_hatzoo_registers_them(tmp_path: Path) -> None:
    out = run(
        """
        import hatzoo, timm
        before = timm.is_model("hat_resnet18")
        hatzoo.create_model  # the builders register the zoo architectures with timm
        print(before, timm.is_model("hat_resnet18"))
        """,
        tmp_path,
    )
    assert out.split() == ["False", "True"]


def test_the_runtime_makes_its_empty_folder_on_first_use_and_removes_it_at_exit(tmp_path: Path) -> None:
    out = run(
        """
        import glob, os, hatzoo.export.runtime as runtime
        ours = lambda: glob.glob(os.path.join(os.environ["TMPDIR"], "hatzoo-*"))
        made_by_import = ours()
        runtime.session_options()
        print(len(made_by_import), len(ours()))
        """,
        tmp_path,
    )
    assert out.split() == ["0", "1"]  # nothing on import, one folder once a session is configured
    assert list(tmp_path.glob("hatzoo-*")) == []  # and gone when the process ended
