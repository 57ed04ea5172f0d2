"""The layers of the design hold: each module imports only its own layer and those below, lazily or not.

Read from the source (AST), so imports inside functions, ``importlib.import_module("...")`` with a
literal name, ``"hatzoo.module:NAME"`` strings (resolved with ``pkgutil.resolve_name``) and
``from hatzoo import NAME`` (through the package's lazy table) all count. The package
``hatzoo/__init__.py`` is the public facade over every layer and is not itself in one.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# lowest first; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, ...]] = [
    (
        "hatzoo.errors",
        "hatzoo._registry",
        "hatzoo.data_config",
        "hatzoo.diagnostics",
        "hatzoo.data",
        "hatzoo.schema",
        "hatzoo.repo_ids",
        "hatzoo.files",
        "hatzoo.images",
        "hatzoo.progress",
    ),
    ("hatzoo.core",),
    ("hatzoo.policies", "hatzoo.architectures"),
    (
        "hatzoo.checkpoint",
        "hatzoo.checkpoint_files",
        "hatzoo.checkpoint_schema",
        "hatzoo.card",
        "hatzoo.optimizers",
        "hatzoo.replay",
    ),
    ("hatzoo.hub", "hatzoo.zoo"),
    (
        "hatzoo.task_inference",
        "hatzoo.task_rules",
        "hatzoo.likelihood_ratio",
        "hatzoo.loader",
        "hatzoo.training",
        "hatzoo.model",
    ),
    ("hatzoo.export",),
    ("hatzoo.cli", "hatzoo.demo"),
]
RESOLVED_NAME = re.compile(r"^hatzoo(\.\w+)*:\w+$")  # "module:NAME", as pkgutil.resolve_name reads it
PACKAGE_DIRS = {"hatzoo": ROOT / "hatzoo", "hatzoo.export": ROOT / "export"}


@dataclass(frozen=True)
class Violation:
    module: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.module} (layer {layer_of(self.module) + 1}) imports {self.target} at line {self.line}"


def layer_of(module: str) -> int | None:
    """Index into LAYERS of the module's layer, or None for a module outside hatzoo's layers."""
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[1]
            ):
                best = (index, len(prefix))
    return None if best is None else best[0]


def lazy_names(init_source: str) -> dict[str, str]:
    """The ``_LAZY`` table of the package facade: attribute -> module it comes from."""
    for node in ast.walk(ast.parse(init_source)):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def imported_modules(
    source: str, module: str, is_package: bool, lazy: dict[str, str]
) -> list[tuple[str, int]]:
    """Every hatzoo module ``source`` imports, wherever the import statement is, with its line."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # "from hatzoo import X": a submodule, or an attribute the facade imports lazily
                target = lazy.get(alias.name, f"{base}.{alias.name}") if base == "hatzoo" else base
                found.append((target, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value, node.lineno))
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and RESOLVED_NAME.match(node.value)
        ):
            found.append((node.value.partition(":")[0], node.lineno))
    return [(t, line) for t, line in found if t == "hatzoo" or t.startswith("hatzoo.")]


def source_modules(package_dirs: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package) for every .py file of the given package folders."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package, folder in package_dirs.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if name not in modules:  # hatzoo/export is not a folder; export/ is installed as hatzoo.export
                modules[name] = (path, is_package)
    return modules


def upward_imports(package_dirs: dict[str, Path]) -> tuple[list[Violation], list[str]]:
    """Imports that reach a higher layer, and modules that are in no layer (both must be empty)."""
    modules = source_modules(package_dirs)
    init = package_dirs["hatzoo"] / "__init__.py"
    lazy = lazy_names(init.read_text()) if init.exists() else {}
    violations: list[Violation] = []
    unlayered: list[str] = []
    for name, (path, is_package) in modules.items():
        if name == "hatzoo":
            continue  # the facade
        own = layer_of(name)
        if own is None:
            unlayered.append(name)
            continue
        for target, line in imported_modules(path.read_text(), name, is_package, lazy):
            theirs = len(LAYERS) - 1 if target == "hatzoo" else layer_of(target)  # the facade reaches all
            if theirs is not None and theirs > own:
                violations.append(Violation(name, target, line))
    return violations, unlayered


def test_every_module_imports_only_its_layer_and_below() -> None:
    violations, unlayered = upward_imports(PACKAGE_DIRS)
    assert not unlayered, f"put these modules in a layer of tests/test_layers.py (and DESIGN.md): {unlayered}"
    assert not violations, "imports against the layers:\n" + "\n".join(map(str, violations))


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {"hatzoo": tmp_path / "hatzoo", "hatzoo.export": tmp_path / "export"}


@pytest.mark.parametrize(
    ("statement", "target"),
    [
        ("from hatzoo.checkpoint import save_pretrained", "hatzoo.checkpoint"),
        ("def save(m):\n    from hatzoo.hub.push import push_model\n", "hatzoo.hub.push"),
        ("import importlib\nimportlib.import_module('hatzoo.task_inference')", "hatzoo.task_inference"),
        ("from hatzoo import HATModel", "hatzoo.model"),
        ("from hatzoo import loader", "hatzoo.loader"),
        ("from hatzoo.export.bundle import read_bundle", "hatzoo.export.bundle"),
        ("from ..policies import find_policy", "hatzoo.policies"),
        ("import hatzoo", "hatzoo"),
        ("CHOICES = 'hatzoo.model:HATModel'", "hatzoo.model"),
    ],
)
def test_an_upward_import_fails_the_check(tmp_path: Path, statement: str, target: str) -> None:
    packages = _package(
        tmp_path,
        {
            "hatzoo/__init__.py": "_LAZY = {'HATModel': 'hatzoo.model'}\n",
            "hatzoo/errors.py": "",
            "hatzoo/core/__init__.py": "",
            "hatzoo/core/model.py": "from hatzoo.errors import HATError\nfrom .groups import MaskGroup\n",
            "hatzoo/core/groups.py": "",
            "hatzoo/policies/__init__.py": "from hatzoo.core.model import HATModel\n",
            "hatzoo/model.py": "from hatzoo.policies import find_policy\n",
            "export/__init__.py": "",
            "export/bundle.py": "from hatzoo.model import HATModel\nfrom .runtime import Pool\n",
            "export/runtime.py": "",
        },
    )
    assert upward_imports(packages) == ([], [])
    (tmp_path / "hatzoo/core/model.py").write_text(f"from hatzoo.errors import HATError\n{statement}\n")
    violations, _ = upward_imports(packages)
    assert [(v.module, v.target) for v in violations] == [("hatzoo.core.model", target)]


def test_a_module_outside_every_layer_fails_the_check(tmp_path: Path) -> None:
    packages = _package(tmp_path, {"hatzoo/__init__.py": "", "hatzoo/errors.py": "", "hatzoo/helpers.py": ""})
    assert upward_imports(packages) == ([], ["hatzoo.helpers"])
