"""Nothing in the product unpickles what it reads: no ``pickle.load``-style call, ``torch.load`` only with
``weights_only=True``, ``np.load`` never with ``allow_pickle=True`` (an ``ast`` scan of every product module)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("pipelines", "assets", "ml", "storage", "imaging", "bench", "experiments")
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def unpickling_calls(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in UNPICKLERS:
            found += [
                f"{node.lineno}: from {node.module} import {a.name}" for a in node.names if "load" in a.name
            ]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name = node.func.attr
        if owner in UNPICKLERS and (name.startswith("load") or name in ("Unpickler", "open")):
            found.append(f"{node.lineno}: {owner}.{name}")
        elif owner == "torch" and name == "load" and _keyword(node, "weights_only") is not True:
            found.append(f"{node.lineno}: torch.load without weights_only=True")
        elif (
            owner in ("np", "numpy")
            and name == "load"
            and _keyword(node, "allow_pickle") not in (None, False)
        ):
            found.append(f"{node.lineno}: np.load with allow_pickle")
        elif name == "read_pickle":
            found.append(f"{node.lineno}: {owner}.read_pickle")
    return found


@pytest.mark.parametrize("package", PRODUCT)
def test_no_module_unpickles(package):
    problems = [
        f"{path.relative_to(ROOT)}:{hit}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for hit in unpickling_calls(path.read_text(encoding="utf-8"))
    ]
    assert problems == []


def test_scan_sees_each_form():
    bad = """
import pickle, torch, numpy as np
from dill import loads
pickle.loads(b"")
torch.load(f)
torch.load(f, weights_only=False)
np.load(f, allow_pickle=True)
"""
    good = "torch.load(f, weights_only=True)\nnp.load(f)\nnp.load(f, allow_pickle=False)\n"
    assert len(unpickling_calls(bad)) == 5
    assert unpickling_calls(good) == []
