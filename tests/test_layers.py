"""Layering: no package imports a layer above it (every import statement, top-level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = frozenset({"pipelines", "bench", "assets", "ml", "storage", "imaging", "tests", "experiments"})

# Package -> project packages it must never import.
FORBIDDEN = {
    "assets": frozenset({"pipelines", "bench"}),
    "ml": frozenset({"storage", "assets", "pipelines", "bench"}),
    "storage": frozenset({"ml", "assets", "pipelines", "bench"}),
    "imaging": PROJECT - {"imaging"},
}


def imported_packages(source: str, package: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in ``source``; relative imports resolve to ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, imported in imported_packages(path.read_text(encoding="utf-8"), package):
            if imported in FORBIDDEN[package]:
                out.append(f"{rel}:{line} imports {imported}")
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    assert (ROOT / package / "__init__.py").exists()
    assert violations(package) == []


def test_function_local_and_aliased_imports_are_seen():
    source = (
        "import os, pipelines.jobs as jobs\n"
        "from . import sibling\n"
        "def f():\n"
        "    from pipelines import cli\n"
        "    if True:\n"
        "        import bench.train\n"
    )
    assert sorted(imported_packages(source, "assets")) == [
        (1, "os"),
        (1, "pipelines"),
        (2, "assets"),
        (4, "pipelines"),
        (6, "bench"),
    ]
