"""The exploration scripts under ``experiments/`` cannot rot silently: each compiles, says how to run it and
imports only names that exist today; the GPU sweeps name existing scripts and configurations that today's
profiles accept. The scripts themselves are never run here (they train for minutes to hours)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
SCRIPTS = sorted(p for p in EXPERIMENTS.glob("*.py") if p.name != "__init__.py")
FIRST_PARTY = {"ml", "storage", "pipelines", "assets", "bench"}


def _top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level (read, not imported: a script runs on import)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _missing_imports(tree: ast.AST) -> list[str]:
    """The first-party imports of ``tree`` (at any depth) that do not resolve against today's code."""
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            missing += [
                a.name
                for a in node.names
                if a.name.split(".")[0] in FIRST_PARTY and importlib.util.find_spec(a.name) is None
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top == "experiments":
                sibling = EXPERIMENTS / f"{node.module.split('.', 1)[1]}.py"
                defined = _top_level_names(sibling) if sibling.exists() else set()
                missing += [f"{node.module}.{a.name}" for a in node.names if a.name not in defined]
            elif top in FIRST_PARTY:
                module = importlib.import_module(node.module)
                missing += [
                    f"{node.module}.{a.name}"
                    for a in node.names
                    if not hasattr(module, a.name)
                    and not (
                        hasattr(module, "__path__") and importlib.util.find_spec(f"{node.module}.{a.name}")
                    )
                ]
    return missing


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_compiles_documents_its_command_and_imports_what_exists(script):
    tree = ast.parse(script.read_text(), filename=str(script))
    compile(tree, str(script), "exec")
    doc = ast.get_docstring(tree) or ""
    assert f"python -m experiments.{script.stem}" in doc, f"{script.name}: the docstring says how to run it"
    assert "docs/experiments" not in script.read_text()
    assert not _missing_imports(tree)


def test_missing_imports_are_caught():
    tree = ast.parse(
        "from bench.quality import load_protocol, no_such_name\n"
        "from experiments.retrieval_decomposition import code_classes, gone\n"
        "import storage.no_such_module\n"
    )
    assert _missing_imports(tree) == [
        "bench.quality.no_such_name",
        "experiments.retrieval_decomposition.gone",
        "storage.no_such_module",
    ]
    with pytest.raises(ModuleNotFoundError):  # a module moved away
        _missing_imports(ast.parse("from pipelines.no_such_module import load_protocol"))


def test_shell_sweeps_name_existing_scripts_and_lists():
    for sh in sorted(EXPERIMENTS.glob("*.sh")):
        text = sh.read_text()
        assert "docs/experiments" not in text, sh.name
        modules = re.findall(r"-m experiments\.(\w+)", text)
        assert modules, f"{sh.name} runs no experiment"
        for name in modules:
            assert (EXPERIMENTS / f"{name}.py").exists(), f"{sh.name}: experiments.{name}"
        for path in re.findall(r"\bexperiments/[\w.]+", text):
            assert (ROOT / path).exists(), f"{sh.name}: {path}"


@pytest.mark.parametrize("sweep", sorted(EXPERIMENTS.glob("gpu_sweep_*.txt")), ids=lambda p: p.stem)
def test_sweep_list_lines_build_full_profile_runs(sweep):
    """Each line (NAME SEED VALIDATION_SIZE CONFIG, '-' = the profile as is) builds as ``full_run.py`` builds it."""
    from bench.quality import parse_config
    from ml.recipes import build_run

    lines = [line for line in sweep.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        _, seed, validation_size, config = line.split(maxsplit=3)
        assert int(validation_size) > 0
        given = parse_config("" if config == "-" else config)
        build_run("full", 10, 1, seed=int(seed), **given)
