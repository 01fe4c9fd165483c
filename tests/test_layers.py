"""Layering: no package imports a layer above it (every import statement, top-level or inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = frozenset({"pipelines", "bench", "assets", "ml", "storage", "imaging", "tests", "experiments"})

# The plain libraries run without the orchestrator: neither Dagster nor its Pipes protocol package.
DAGSTER = frozenset({"dagster", "dagster_pipes"})
# Package -> packages it must never import.
FORBIDDEN = {
    "assets": frozenset({"pipelines", "bench"}),
    "ml": frozenset({"storage", "assets", "pipelines", "bench"}) | DAGSTER,
    "storage": frozenset({"ml", "assets", "pipelines", "bench"}) | DAGSTER,
    "imaging": (PROJECT - {"imaging"}) | DAGSTER,
}
# dagster_pipes belongs to the Pipes entry points only: the processes Dagster starts off the orchestrator, which
# must not need Dagster itself (a GPU pod, a Databricks job).
PIPES_ENTRY_POINTS = ("assets/remote_training.py",)


def imported_packages(source: str, package: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in ``source``; relative imports resolve to ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
    return found


def imported_modules(source: str) -> list[str]:
    """Every module name an import in ``source`` may load (``from a import b``: ``a`` and ``a.b``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def project_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def reached_files(entry: Path) -> set[Path]:
    """The project files that importing ``entry`` may run: its imports (top-level or inside functions) and
    theirs, with every package's ``__init__.py`` on the way."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(path.read_text(encoding="utf-8")):
            parts = module.split(".")
            todo += [f for i in range(1, len(parts) + 1) if (f := project_file(".".join(parts[:i])))]
    return seen


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


@pytest.mark.parametrize("entry", PIPES_ENTRY_POINTS)
def test_a_pipes_entry_point_reaches_no_dagster_import(entry):
    files = reached_files(ROOT / entry)
    assert ROOT / "assets/training.py" in files and ROOT / "ml/train.py" in files  # the walk follows imports
    found = [
        f"{path.relative_to(ROOT).as_posix()}:{line}"
        for path in sorted(files)
        for line, imported in imported_packages(path.read_text(encoding="utf-8"), "")
        if imported == "dagster"
    ]
    assert found == []


def test_only_the_pipes_entry_points_import_dagster_pipes():
    found = [
        path.relative_to(ROOT).as_posix()
        for package in PROJECT - {"tests"}
        for path in sorted((ROOT / package).rglob("*.py"))
        if any(
            imported == "dagster_pipes" for _, imported in imported_packages(path.read_text("utf-8"), package)
        )
    ]
    assert sorted(found) == sorted(PIPES_ENTRY_POINTS)
