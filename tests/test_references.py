"""Every file name the repository cites (code, comments, docstrings, docs) exists in the repository."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a path-like token ending in a source or document extension; URLs, globs and templates are left out below
CITED = re.compile(r"(?<![\w/.<{*-])((?:[\w.-]+/)*[\w.-]+\.(?:md|py|sh|ya?ml|toml|txt|cfg|ini))\b")
# file names the product writes or reads at run time, not files of this repository
RUNTIME = {"dagster.yaml", "pyvenv.cfg", "requirements.txt", "desktop.ini"}
SELF = "tests/test_references.py"  # its own examples cite missing files on purpose


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [f for f in out.stdout.splitlines() if (REPO / f).is_file()]


def citations(text: str) -> set[str]:
    found = set()
    for line in text.splitlines():
        for match in CITED.finditer(line):
            token = match.group(1)
            before = line[: match.start(1)]
            if re.search(r"(https?|s3|file)://\S*$", before) or token.startswith("."):
                continue
            found.add(token)
    return found


def prose(path: Path) -> str:
    """What a file says to a reader: all of a document; a Python file's comments and docstrings."""
    text = path.read_text(errors="replace")
    if path.suffix != ".py":
        return text
    parts = [
        t.string for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            parts.append(ast.get_docstring(node) or "")
    return "\n".join(parts)


def missing_citations(root: Path, files: list[str]) -> list[str]:
    names = {Path(f).name for f in files}
    paths = set(files)
    problems = []
    for f in files:
        if f == SELF or not f.endswith(
            (".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".txt", "Makefile", "run")
        ):
            continue
        for token in sorted(citations(prose(root / f))):
            if token in RUNTIME:
                continue
            ok = (
                token in names
                if "/" not in token
                else any(p == token or p.endswith("/" + token) for p in paths)
            )
            if not ok:
                problems.append(f"{f}: cites {token}, which is not in the repository")
    return problems


def test_every_cited_file_exists() -> None:
    assert missing_citations(REPO, tracked_files()) == []


def test_citations_are_found() -> None:
    text = "see DESIGN.md and docs/ARCHITECTURE.md; models in ml/models/vts.py; https://x.org/a.md is a URL"
    assert citations(text) == {"DESIGN.md", "docs/ARCHITECTURE.md", "ml/models/vts.py"}


def test_a_missing_file_is_flagged(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "A.md").write_text("See docs/B.md and OUTSIDE.md.")
    (tmp_path / "docs" / "B.md").write_text("Back to A.md.")
    assert missing_citations(tmp_path, ["docs/A.md", "docs/B.md"]) == [
        "docs/A.md: cites OUTSIDE.md, which is not in the repository"
    ]
