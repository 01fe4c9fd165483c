"""The fault campaign's state checker sees each kind of damage a kill could leave (the campaign itself is the
``vitrieve bench faults --quick`` step of CI: it takes minutes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.faults import NAME, Kill, corrupt_state, summary
from storage.codes import write_codes
from storage.diagnostics import DiagnosticsDB, insert_metrics
from storage.fs import StorageRoot
from storage.index import build_index, publish, write_index

ROWS = np.arange(50, dtype=np.int64)
CODES = np.random.default_rng(1).integers(0, 256, (50, 8), dtype=np.uint8)


def _published(tmp_path: Path) -> tuple[StorageRoot, str]:
    root = StorageRoot(tmp_path / "data")
    write_codes(root, NAME, "m", ROWS, CODES, 64)
    publish(root, write_index(root, build_index(ROWS, CODES, 64), NAME, "m", "flat", 64, 50, 0.01))
    db = str(tmp_path / "diag.duckdb")
    DiagnosticsDB(db).record(
        "evaluation", NAME, "m", {}, None, lambda r, con: insert_metrics(con, r, [("x", 1, 1.0)])
    )
    return root, db


def test_a_consistent_state_passes(tmp_path):
    root, db = _published(tmp_path)
    assert corrupt_state(root.uri, db, had_published=True) == []
    assert corrupt_state(str(tmp_path / "empty"), str(tmp_path / "none.duckdb"), had_published=False) == []


def test_each_damage_is_found(tmp_path):
    root, db = _published(tmp_path)
    part = Path(root.path("codes", NAME, "m", "part-00000.parquet"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    Path(root.path("indexes", NAME, "CURRENT")).unlink()
    import duckdb

    with duckdb.connect(db) as con:
        con.execute("INSERT INTO metrics VALUES ('no-such-run', 'x', 1, 1.0)")
    problems = corrupt_state(root.uri, db, had_published=True)
    assert [p.split(":")[0] for p in problems] == ["codes m", "published index lost", "diagnostics DB"]


def test_summary_counts_only_real_kills():
    rows = [
        Kill(0, "local", "fresh", "catalogue", 1.0, "catalogue", [], True, True),
        Kill(
            1,
            "s3",
            "update",
            "binary_index",
            9.0,
            "binary_index",
            ["published index lost: no CURRENT"],
            True,
            True,
        ),
        Kill(2, "local", "fresh", "catalogue", 1.0, "finished before the kill", [], True, True),
    ]
    assert summary(rows) == {
        "kills": 2,
        "corrupt_states": 1,
        "lost_published_indexes": 1,
        "reruns_failed": 0,
        "codes_differ": 0,
        "finished_before_kill": 1,
    }
