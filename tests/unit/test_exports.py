"""The public surface of `shared` is exactly what each `__all__` says (httpx's
tests/test_exported_members.py, anyio's tests/test_all_attributes.py).

- Every package of `shared` whose path has no private part exports exactly the public names of
  its namespace: a name imported into an `__init__` and left out of `__all__` fails, and so
  does a name in `__all__` that is not there (names a package imports on first use, as
  `shared.local` does, count once resolved).
- Every public module lists in `__all__` each class and function it defines without a leading
  underscore (a CLI's commands are its app's, not importable API), and every listed name
  exists.
- Nothing outside a package imports its private modules, except the tests of those modules
  (`services/`, `bench/` and the rest of `shared` use public names only), and every name the
  benchmarks import exists (mypy does not read `bench/`; its imports are inside functions).
"""

from __future__ import annotations
import __future__

import ast
import importlib
import inspect
import pkgutil
import types
from pathlib import Path

import pytest
import typer

import shared

ROOT = Path(shared.__file__).parent.parent


def _public_modules() -> list[tuple[str, bool]]:
    found = [("shared", True)]
    for info in pkgutil.walk_packages(shared.__path__, "shared."):
        parts = info.name.split(".")
        if any(part.startswith("_") for part in parts[1:]):
            continue
        found.append((info.name, info.ispkg))
    return sorted(found)


PUBLIC = _public_modules()
PACKAGES = [name for name, is_package in PUBLIC if is_package]
MODULES = [name for name, is_package in PUBLIC if not is_package]


def _namespace_names(package: types.ModuleType) -> set[str]:
    """The public names of a package's namespace: what `from package import *` would offer
    without `__all__`, less its subpackages and modules and `from __future__` features."""
    return {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType | __future__._Feature)
    }


def test_every_public_package_and_module_is_covered() -> None:
    # A guard against the walk finding nothing (a broken install would pass everything).
    assert {"shared.consumers", "shared.consumers.sqs", "shared.outbox", "shared.testing",
            "shared.hosts.lambda_", "shared.emulator.fixes"} <= set(PACKAGES)
    assert {"shared.aws", "shared.errors", "shared.tracing"} <= set(MODULES)


@pytest.mark.parametrize("name", PACKAGES)
def test_a_package_exports_exactly_its_public_names(name: str) -> None:
    package = importlib.import_module(name)
    exported = list(getattr(package, "__all__", ()))
    assert len(set(exported)) == len(exported), "a name twice in __all__"
    missing = [n for n in exported if not hasattr(package, n)]  # resolves lazy names too
    assert missing == [], f"{name}.__all__ names what it does not have"
    unlisted = _namespace_names(package) - set(exported)
    assert unlisted == set(), f"{name} holds public names it does not export"


@pytest.mark.parametrize("name", MODULES)
def test_a_module_exports_what_it_defines(name: str) -> None:
    module = importlib.import_module(name)
    if name.endswith(".__main__"):
        return
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    exported = list(module.__all__)
    assert len(set(exported)) == len(exported), "a name twice in __all__"
    assert [n for n in exported if not hasattr(module, n)] == []
    commands = {
        command.callback
        for value in vars(module).values()
        if isinstance(value, typer.Typer)
        for command in value.registered_commands
    }
    defined_here = {
        n
        for n, value in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
        and value not in commands
    }
    assert defined_here - set(exported) == set(), f"{name} defines public names it does not export"


def _private_imports(path: Path) -> list[str]:
    """`from a._b import ...` in `path` where `a` is a package `path` is not inside."""
    module_parts = path.relative_to(ROOT).with_suffix("").parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
            continue
        parts = node.module.split(".")
        if parts[0] not in {"shared", "services"}:
            continue
        private = next((i for i, part in enumerate(parts) if part.startswith("_")), None)
        owner = tuple(parts[:private]) if private is not None else None
        if owner is not None and module_parts[: len(owner)] != owner:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module}")
        named = [a.name for a in node.names if a.name.startswith("_")]
        if private is None and named and module_parts[: len(parts)] != tuple(parts):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {named} from {node.module}")
    return found


@pytest.mark.parametrize("tree", ["shared", "services", "bench"])
def test_no_private_module_is_imported_across_packages(tree: str) -> None:
    found = [hit for path in sorted((ROOT / tree).rglob("*.py")) for hit in _private_imports(path)]
    assert found == []


def test_every_name_the_benchmarks_import_exists() -> None:
    missing = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
                continue
            if node.module.split(".")[0] not in {"shared", "services"}:
                continue
            module = importlib.import_module(node.module)
            missing += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}"
                        for alias in node.names if not hasattr(module, alias.name)]
    assert missing == []
