"""Faults, with real subprocesses: SIGKILL during ingest, encode or index leaves the published catalogue,
codes and index intact and readable, and the next run completes; two processes ingesting at once into one
diagnostics DB lose no rows."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from storage.catalogue import read_catalogue
from storage.codes import read_codes
from storage.diagnostics import DiagnosticsDB
from storage.fs import StorageRoot
from storage.index import current, load_index, search
from tests.catalogue_factory import write_folder
from tests.tiny_graph import failure_messages, run_graph, tiny_catalogue_config

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """A state directory (source, storage root, diagnostics DB, Dagster home) after one whole run."""
    base = tmp_path_factory.mktemp("published")
    (base / "home").mkdir()
    write_folder(base / "src", per_class=10)
    result = run_graph(
        dg.DagsterInstance.local_temp(str(base / "home")),
        "pets",
        tiny_catalogue_config(str(base / "src")),
        str(base / "data"),
        str(base / "diag.duckdb"),
    )
    assert result.success, failure_messages(result)
    return base


class State:
    """A private copy of the published state directory."""

    def __init__(self, published: Path, tmp_path: Path) -> None:
        self.dir = tmp_path / "state"
        shutil.copytree(published, self.dir, symlinks=True)
        self.root = StorageRoot(self.dir / "data")
        self.instance = dg.DagsterInstance.local_temp(str(self.dir / "home"))

    def spec(self, selection: list[str] | None = None, **extra) -> dict:
        return {
            "home": str(self.dir / "home"),
            "name": "pets",
            "catalogue": tiny_catalogue_config(str(self.dir / "src")),
            "root": str(self.dir / "data"),
            "db": str(self.dir / "diag.duckdb"),
            "selection": selection,
            **extra,
        }

    def run(self, selection: list[str]) -> None:
        s = self.spec(selection)
        result = run_graph(self.instance, s["name"], s["catalogue"], s["root"], s["db"], selection)
        assert result.success, failure_messages(result)

    def files(self) -> dict[str, str]:
        """sha256 of every published file (temporary files excluded)."""
        data = self.dir / "data"
        return {
            str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }


def kill_inside(spec: dict, marker: Path, timeout: float = 180.0) -> None:
    """Run the child until it freezes inside its atomic write, then SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.fault_child", json.dumps(spec)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            out, err = child.communicate()
            pytest.fail(
                f"child exited ({child.returncode}) before the kill point: {out[-2000:]} {err[-4000:]}"
            )
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("child never reached the kill point")
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL


def assert_published_readable(root: StorageRoot) -> None:
    """Catalogue, codes of the published model and the published index load, and a database code finds itself."""
    table, _ = read_catalogue(root, "pets", columns=["row_id", "in_database"])
    pointer = current(root, "pets")
    row_ids, codes, _ = read_codes(root, "pets", pointer["model_id"])
    index, manifest = load_index(root, "pets")
    assert manifest.sha256 == pointer["sha256"]
    probe = int(np.flatnonzero(np.isin(row_ids, index.ids()))[0])
    dist, ids = search(index, codes[probe : probe + 1], 3)
    assert dist[0, 0] == 0 and row_ids[probe] in ids[0][dist[0] == 0]


# Where each stage is killed: inside its atomic write, after the data went to the temporary file.
KILL_POINTS = (
    (
        "catalogue",
        "catalogue.json",
    ),  # the new shard files written, the manifest that lists them not yet renamed
    ("packed_codes", "part-"),  # a new codes part written, not yet renamed
    ("binary_index", "flat.manifest.json"),  # the new .faiss renamed into place, its manifest not yet
)


def test_sigkill_during_ingest_encode_and_index(published, tmp_path):
    """New source files give every stage work; each stage is SIGKILLed mid-write, the published artifacts are
    checked, and the stage is run again to completion (removing the killed run's temporary file) before the next
    one is killed."""
    state = State(published, tmp_path)
    write_folder(state.dir / "src", per_class=2, start=50)
    old_ntotal = load_index(state.root, "pets")[0].ntotal
    for stage, pause_on in KILL_POINTS:
        files = state.files()
        marker = tmp_path / f"frozen-{stage}"
        kill_inside(state.spec([stage], pause_on=pause_on, marker=str(marker)), marker)
        assert pause_on in marker.read_text(), stage
        after = state.files()
        assert {k: after.get(k) for k in files} == files, f"killed {stage} changed a published file"
        assert_published_readable(state.root)
        temps = list((state.dir / "data").rglob(".*.tmp"))
        assert temps, f"killed {stage} left no temporary file"
        for temp in temps:  # as old as a temporary file of a run killed long ago
            os.utime(temp, (time.time() - 3600,) * 2)
        state.run([stage])  # the next run completes, and removes what the killed one left
        assert_published_readable(state.root)
        assert list((state.dir / "data").rglob(".*.tmp")) == [], (
            f"{stage} kept the killed run's temporary file"
        )
    table, _ = read_catalogue(state.root, "pets", columns=["row_id", "in_database"])
    assert table.num_rows == 36 and load_index(state.root, "pets")[0].ntotal == old_ntotal + 6


_INGEST_LOOP = """
import os, sys, time
import ml.data  # torch: imported before the start line, so both writers really overlap
from storage.diagnostics import DiagnosticsDB
from storage.ingest import Limits, ingest
from storage.protocols import Protocol
from storage.sources import list_folder
src, db, name, n, ready = sys.argv[1], DiagnosticsDB(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
open(ready + name, "w").close()
while not all(os.path.exists(ready + c) for c in ("cat1", "cat2")):
    time.sleep(0.01)  # start together
for seed in range(n):  # what the catalogue asset does: ingest, then record the run and its rejects
    r = ingest(name, list_folder(src), Protocol(train_per_label=4, query_per_label=2, validation_size=2, seed=seed),
               Limits(max_reject_fraction=0.5))
    db.record_ingest(name, {"seed": seed}, [(x.item, x.reason, x.detail) for x in r.rejected],
                     {"listed": r.listed, "accepted": r.table.num_rows, "rejected": len(r.rejected)})
"""


def test_two_ingest_runs_write_the_diagnostics_db_at_once(tmp_path):
    src = write_folder(tmp_path / "src", per_class=8)
    for i in range(4):
        (src / "cat" / f"bad{i}.png").write_bytes(b"not a png")
    db, n = tmp_path / "diag.duckdb", 12
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _INGEST_LOOP,
                str(src),
                str(db),
                f"cat{w}",
                str(n),
                str(tmp_path / "ready-"),
            ],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in (1, 2)
    ]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-4000:]
    diag = DiagnosticsDB(db)
    _, runs = diag.query(
        "SELECT catalogue, count(*), count(DISTINCT run_id) FROM runs WHERE kind = 'ingest' "
        "GROUP BY 1 ORDER BY 1"
    )
    assert runs == [("cat1", n, n), ("cat2", n, n)]
    _, rejected = diag.query(
        "SELECT r.catalogue, count(*) FROM rejected x JOIN runs r USING (run_id) GROUP BY 1 ORDER BY 1"
    )
    assert rejected == [("cat1", 4 * n), ("cat2", 4 * n)]
    _, metrics = diag.query(
        "SELECT count(*) FROM metrics m JOIN runs r USING (run_id) WHERE r.kind = 'ingest'"
    )
    assert metrics == [(3 * 2 * n,)]
    _, overlap = diag.query(
        "SELECT min(finished_at) FILTER (catalogue = 'cat1') < max(started_at) FILTER "
        "(catalogue = 'cat2') AND min(finished_at) FILTER (catalogue = 'cat2') < max(started_at) "
        "FILTER (catalogue = 'cat1') FROM runs"
    )
    assert overlap == [(True,)], "the two writers did not run at the same time"
