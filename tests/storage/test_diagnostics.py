"""Tests for storage.diagnostics: schema, migrations, transactions, read-only queries, multi-process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from storage.diagnostics import (
    CURRENT_SCHEMA_VERSION,
    MIGRATIONS,
    DatabaseBusyError,
    DiagnosticsDB,
    ReadOnlyQueryError,
    SchemaVersionError,
    insert_bit_stats,
    insert_metrics,
    insert_per_class,
    insert_pr_curve,
    insert_search_latency,
    insert_training_log,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "runs",
    "metrics",
    "pr_curve",
    "bit_stats",
    "per_class",
    "search_latency",
    "training_log",
    "schema_version",
}


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _snapshot(db: DiagnosticsDB) -> dict[str, int]:
    """Row count of every table and view, plus the list of tables and views itself."""
    _, rows = db.query("SELECT table_name FROM information_schema.tables ORDER BY table_name")
    names = [r[0] for r in rows]
    sql = " UNION ALL ".join(f"SELECT '{n}', count(*) FROM \"{n}\"" for n in names)
    return {"__tables__": ",".join(names), **dict(db.query(sql)[1])}


@pytest.fixture
def db(tmp_path: Path) -> DiagnosticsDB:
    d = DiagnosticsDB(tmp_path / "sub" / "diagnostics.duckdb")
    d.migrate()
    return d


def test_schema_created_and_migrate_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "diag.duckdb"
    db = DiagnosticsDB(path)
    assert db.migrate() == CURRENT_SCHEMA_VERSION
    assert path.is_file()
    assert db.migrate() == CURRENT_SCHEMA_VERSION
    assert DiagnosticsDB(path).migrate() == CURRENT_SCHEMA_VERSION
    _, rows = db.query("SELECT table_name, table_type FROM information_schema.tables")
    kinds = dict(rows)
    assert set(kinds) >= TABLES
    assert {"latest_metrics", "leaderboard"} <= {n for n, t in kinds.items() if t == "VIEW"}
    _, versions = db.query("SELECT version FROM schema_version ORDER BY version")
    assert [v for (v,) in versions] == [v for v, _ in MIGRATIONS]  # each migration applied exactly once
    cols, _ = db.query("SELECT * FROM search_latency")
    assert cols == [
        "run_id",
        "index_kind",
        "threads",
        "batch",
        "p50_ms",
        "p99_ms",
        "qps",
        "recall_at_k",
        "k",
        "n_database",
        "n_queries",
    ]


def test_record_round_trip(db: DiagnosticsDB) -> None:
    def write(run_id: str, con: duckdb.DuckDBPyConnection) -> None:
        insert_metrics(con, run_id, [("map", 100, 0.5), ("map", None, 0.25), ("precision", 1, 0.75)])
        insert_pr_curve(con, run_id, [(0, 0.9, 0.1), (1, 0.8, 0.3), (2, 0.7, 0.6)])
        insert_bit_stats(con, run_id, [0.5, 0.4], [1.0, 0.97])

    run_id = db.record("evaluation", "fmnist", "m1", {"bits": 64, "k": [100]}, "dag-1", write)
    assert len(run_id) == 32
    cols, rows = db.query("SELECT * FROM runs")
    run = dict(zip(cols, rows[0], strict=True))
    assert len(rows) == 1
    assert run["run_id"] == run_id and run["kind"] == "evaluation" and run["status"] == "success"
    assert run["catalogue"] == "fmnist" and run["model_id"] == "m1" and run["dagster_run_id"] == "dag-1"
    assert json.loads(run["config"]) == {"bits": 64, "k": [100]}
    assert run["started_at"] <= run["finished_at"]
    _, rows = db.query(
        "SELECT name, k, value FROM metrics WHERE run_id = ? ORDER BY name, k NULLS LAST", [run_id]
    )
    assert rows == [("map", 100, 0.5), ("map", None, 0.25), ("precision", 1, 0.75)]
    assert db.query("SELECT radius, recall FROM pr_curve ORDER BY radius")[1] == [
        (0, 0.1),
        (1, 0.3),
        (2, 0.6),
    ]
    assert db.query("SELECT bit, ones_rate FROM bit_stats ORDER BY bit")[1] == [(0, 0.5), (1, 0.4)]


def test_step_by_step_writers(db: DiagnosticsDB) -> None:
    run_id = db.start_run("benchmark", "fmnist", "m1", {"what": "search"})
    assert db.query("SELECT status, finished_at FROM runs")[1] == [("running", None)]
    db.append(run_id, lambda rid, con: insert_metrics(con, rid, [("qps", None, 7100.0)]))
    db.append(run_id, lambda rid, con: insert_pr_curve(con, rid, [(0, 1.0, 0.5)]))
    db.append(run_id, lambda rid, con: insert_bit_stats(con, rid, [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]))
    db.append(run_id, lambda rid, con: insert_per_class(con, rid, [(0, 0.8, 1000), (1, 0.6, 1000)]))
    latency = [
        dict(
            index_kind="flat",
            threads=1,
            batch=10000,
            p50_ms=0.1,
            p99_ms=0.3,
            qps=7100.0,
            recall_at_k=None,
            k=None,
            n_database=70000,
            n_queries=10000,
        ),
        dict(
            index_kind="hnsw",
            threads=2,
            batch=1,
            p50_ms=0.05,
            p99_ms=0.2,
            qps=14000.0,
            recall_at_k=0.93,
            k=100,
            n_database=70000,
            n_queries=10000,
        ),
    ]
    db.append(run_id, lambda rid, con: insert_search_latency(con, rid, latency))
    log = [
        dict(epoch=0, step=10, loss=1.5, lr=1e-3, images_per_s=62.0, seconds=3.0),
        dict(epoch=0, loss=1.2, lr=1e-3, images_per_s=63.0, seconds=6.0, val_map=0.4),
    ]
    db.append(run_id, lambda rid, con: insert_training_log(con, rid, log))
    db.finish_run(run_id, "failed")
    assert db.query("SELECT status FROM runs")[1] == [("failed",)]
    assert db.query("SELECT count(*) FROM bit_stats")[1] == [(3,)]
    assert db.query("SELECT sum(n) FROM per_class")[1] == [(2000,)]
    assert db.query("SELECT index_kind, recall_at_k, k FROM search_latency ORDER BY qps")[1] == [
        ("flat", None, None),
        ("hnsw", 0.93, 100),
    ]
    assert db.query("SELECT step, val_map FROM training_log ORDER BY seconds")[1] == [(10, None), (None, 0.4)]

    with pytest.raises(KeyError):
        db.append("no-such-run", lambda rid, con: insert_metrics(con, rid, [("map", 100, 0.1)]))
    with pytest.raises(KeyError):
        db.finish_run("no-such-run")
    with pytest.raises(ValueError, match="bit_stats"):
        db.append(run_id, lambda rid, con: insert_bit_stats(con, rid, [0.5], [1.0, 1.0]))
    bad_log = [dict(epoch=1, loss=1.0, lr=0.1, images_per_s=1.0, seconds=1.0, valmap=0.1)]
    with pytest.raises(ValueError, match="unknown keys"):
        db.append(run_id, lambda rid, con: insert_training_log(con, rid, bad_log))
    assert db.query("SELECT count(*) FROM metrics")[1] == [(1,)]


def test_append_rolls_back_on_exception(db: DiagnosticsDB) -> None:
    run_id = db.start_run("training", "fmnist", "m1")

    def write(rid: str, con: duckdb.DuckDBPyConnection) -> None:
        insert_metrics(con, rid, [("map", 100, 0.5)])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        db.append(run_id, write)
    assert db.query("SELECT count(*) FROM metrics")[1] == [(0,)]
    assert db.query("SELECT run_id, status FROM runs")[1] == [(run_id, "running")]  # the run itself stays


def test_record_ingest(db: DiagnosticsDB) -> None:
    rejected = [("a.png", "corrupt", "truncated"), ("b.png", "too-small", None)]
    run_id = db.record_ingest("zoo", {"seed": 0}, rejected, {"accepted": 7, "rejected": 2}, "dag-9")
    _, rows = db.query("SELECT kind, catalogue, model_id, dagster_run_id, status FROM runs")
    assert rows == [("ingest", "zoo", None, "dag-9", "success")]
    assert (
        db.query("SELECT item, reason, detail FROM rejected WHERE run_id = ? ORDER BY item", [run_id])[1]
        == rejected
    )
    assert db.query("SELECT name, k, value FROM metrics ORDER BY name")[1] == [
        ("ingest_accepted", None, 7.0),
        ("ingest_rejected", None, 2.0),
    ]
    # A later ingest of the same catalogue replaces what latest_rejected shows.
    time.sleep(0.002)
    db.record_ingest("zoo", None, [("c.png", "duplicate", "of a.png")], {"accepted": 8}, status="failed")
    assert db.query("SELECT item FROM latest_rejected WHERE catalogue = 'zoo'")[1] == [("c.png",)]


def test_record_rolls_back_on_exception(db: DiagnosticsDB) -> None:
    before = _snapshot(db)

    def write(run_id: str, con: duckdb.DuckDBPyConnection) -> None:
        insert_metrics(con, run_id, [("map", 100, 0.5)])
        insert_pr_curve(con, run_id, [(0, 0.9, 0.1)])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        db.record("evaluation", "fmnist", "m1", None, None, write)
    assert _snapshot(db) == before
    assert db.query("SELECT count(*) FROM runs")[1] == [(0,)]
    # The database is still writable afterwards, and nested writes are refused rather than deadlocking.
    with pytest.raises(RuntimeError, match="nested write"):
        db.record(
            "evaluation",
            "fmnist",
            "m1",
            None,
            None,
            lambda rid, con: db.append(rid, lambda r, c: insert_metrics(c, r, [])),
        )
    db.record(
        "evaluation", "fmnist", "m1", None, None, lambda rid, con: insert_metrics(con, rid, [("map", 1, 1.0)])
    )
    assert db.query("SELECT count(*) FROM runs")[1] == [(1,)]


REJECTED = [
    ("INSERT INTO runs (run_id, kind, started_at, status) VALUES ('x', 'e', now(), 's')", "INSERT"),
    ("UPDATE metrics SET value = 0", "UPDATE"),
    ("DELETE FROM metrics", "DELETE"),
    ("CREATE TABLE evil (a INTEGER)", "CREATE"),
    ("CREATE OR REPLACE VIEW leaderboard AS SELECT 1", "CREATE"),
    ("DROP TABLE metrics", "DROP"),
    ("ALTER TABLE metrics ADD COLUMN evil INTEGER", "ALTER"),
    ("ATTACH '{tmp}/other.duckdb' AS other", "ATTACH"),
    ("COPY metrics TO '{tmp}/out.csv'", "COPY"),
    ("COPY (SELECT * FROM metrics) TO '{tmp}/out.parquet' (FORMAT parquet)", "COPY"),
    ("EXPORT DATABASE '{tmp}/export'", "EXPORT"),
    ("WITH gone AS (DELETE FROM metrics RETURNING *) SELECT * FROM gone", "DELETE"),
    (
        "SELECT * FROM (WITH x AS (INSERT INTO metrics VALUES ('r', 'n', 1, 1) RETURNING *) SELECT * FROM x)",
        "INSERT",
    ),
    ("EXPLAIN ANALYZE DELETE FROM metrics", "DELETE"),
    ("CHECKPOINT", "CALL"),
    ("SET threads = 1", "SET"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("BEGIN TRANSACTION", "TRANSACTION"),
    ("SELECT 1; DROP TABLE metrics", "DROP"),
    ("SELECT count(*) FROM metrics; DELETE FROM metrics; SELECT 1", "DELETE"),
]


@pytest.mark.parametrize(("sql", "kind"), REJECTED)
def test_query_rejects_writes(db: DiagnosticsDB, tmp_path: Path, sql: str, kind: str) -> None:
    db.record(
        "evaluation", "c", "m", None, None, lambda rid, con: insert_metrics(con, rid, [("map", 100, 0.5)])
    )
    before = _snapshot(db)
    mtime = db.path.stat().st_mtime_ns
    with pytest.raises(ReadOnlyQueryError, match="read-only") as info:
        db.query(sql.format(tmp=tmp_path))
    assert kind in str(info.value)
    assert info.value.statement_kind == kind
    assert _snapshot(db) == before
    assert db.query("SELECT value FROM metrics")[1] == [(0.5,)]
    assert db.path.stat().st_mtime_ns == mtime
    assert not any((tmp_path / n).exists() for n in ("other.duckdb", "out.csv", "out.parquet", "export"))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "FROM runs",
        "SHOW TABLES",
        "DESCRIBE metrics",
        "SUMMARIZE metrics",
        "EXPLAIN SELECT * FROM leaderboard",
        "-- comment\nEXPLAIN ANALYZE SELECT count(*) FROM metrics",
        "PRAGMA table_info('runs')",
        "WITH m AS (SELECT * FROM metrics) SELECT count(*) FROM m UNION ALL SELECT 2",
        "SELECT 1; SELECT 2",
    ],
)
def test_query_allows_reads(db: DiagnosticsDB, sql: str) -> None:
    cols, rows = db.query(sql)
    assert cols and isinstance(rows, list)


def test_query_params_and_missing_file(db: DiagnosticsDB, tmp_path: Path) -> None:
    assert db.query("SELECT ? + 1 AS x", [41]) == (["x"], [(42,)])
    assert db.query("SELECT $a AS a", {"a": "v"}) == (["a"], [("v",)])
    missing = tmp_path / "nowhere" / "missing.duckdb"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        DiagnosticsDB(missing).query("SELECT 1")
    assert not missing.exists() and not missing.parent.exists()


def _evaluation(
    db: DiagnosticsDB, model: str, metrics: list, status: str = "success", kind: str = "evaluation"
) -> str:
    return db.record(
        kind, "fmnist", model, None, None, lambda rid, con: insert_metrics(con, rid, metrics), status
    )


def test_leaderboard_and_latest_metrics(db: DiagnosticsDB) -> None:
    old = [
        ("map", 100, 0.1),
        ("map", 1000, 0.11),
        ("map", None, 0.12),
        ("precision", 1, 0.13),
        ("precision", 100, 0.14),
    ]
    _evaluation(db, "A", old)
    time.sleep(0.002)
    a_new = _evaluation(
        db,
        "A",
        [
            ("map", 100, 0.7),
            ("map", 1000, 0.6),
            ("map", None, 0.5),
            ("precision", 1, 0.9),
            ("precision", 5, 0.85),
            ("precision", 100, 0.8),
        ],
    )
    b = _evaluation(db, "B", [("map", 100, 0.4), ("map", None, 0.3), ("precision", 1, 0.6)])
    time.sleep(0.002)
    _evaluation(db, "A", [("map", None, 0.99)], status="failed")  # newer, but failed: ignored
    _evaluation(db, "B", [("map", None, 0.98)], kind="benchmark")  # newer, but not an evaluation: ignored

    cols, rows = db.query("SELECT * FROM leaderboard")
    assert cols[:8] == [
        "catalogue",
        "model_id",
        "map_at_100",
        "map_at_1000",
        "map_at_all",
        "p_at_1",
        "p_at_100",
        "finished_at",
    ]
    board = {r[1]: dict(zip(cols, r, strict=True)) for r in rows}
    assert [r[1] for r in rows] == ["A", "B"]  # ordered by map_at_all descending
    assert {k: board["A"][k] for k in cols[2:7]} == {
        "map_at_100": 0.7,
        "map_at_1000": 0.6,
        "map_at_all": 0.5,
        "p_at_1": 0.9,
        "p_at_100": 0.8,
    }
    assert {k: board["B"][k] for k in cols[2:7]} == {
        "map_at_100": 0.4,
        "map_at_1000": None,
        "map_at_all": 0.3,
        "p_at_1": 0.6,
        "p_at_100": None,
    }
    assert board["A"]["run_id"] == a_new and board["B"]["run_id"] == b

    _, rows = db.query(
        "SELECT model_id, name, k, value FROM latest_metrics ORDER BY model_id, name, k NULLS LAST"
    )
    assert ("A", "map", None, 0.5) in rows and ("A", "precision", 5, 0.85) in rows
    assert ("B", "map", None, 0.3) in rows
    assert len(rows) == 6 + 3


def test_upgrade_from_v1_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)")
    version, statements = MIGRATIONS[0]
    assert version == 1
    for statement in statements:
        con.execute(statement)
    con.execute("INSERT INTO schema_version VALUES (1, TIMESTAMP '2026-01-01 00:00:00')")
    con.execute(
        "INSERT INTO runs VALUES ('r1', 'evaluation', 'fmnist', 'old-model', NULL, '{\"bits\": 16}', "
        "TIMESTAMP '2026-01-01 00:00:00', TIMESTAMP '2026-01-01 00:01:00', 'success')"
    )
    con.execute("INSERT INTO metrics VALUES ('r1', 'map', NULL, 0.42), ('r1', 'map', 100, 0.5)")
    con.execute("INSERT INTO search_latency VALUES ('r1', 'flat', 1, 100, 0.1, 0.2, 5754.0, NULL)")
    con.execute("INSERT INTO training_log VALUES ('r1', 0, 2.5, 0.001, 60.0, 10.0)")
    con.close()

    db = DiagnosticsDB(path)
    assert db.query("SELECT max(version) FROM schema_version")[1] == [(1,)]
    # Any writer upgrades implicitly; the new columns exist and the old rows are intact.
    run_id = db.start_run("benchmark", "fmnist", "old-model")
    latency = dict(
        index_kind="flat",
        threads=2,
        batch=100,
        p50_ms=0.05,
        p99_ms=0.1,
        qps=14000.0,
        n_database=70000,
        n_queries=10000,
    )
    db.append(run_id, lambda rid, con: insert_search_latency(con, rid, [latency]))
    assert db.migrate() == CURRENT_SCHEMA_VERSION
    assert db.query("SELECT max(version) FROM schema_version")[1] == [(CURRENT_SCHEMA_VERSION,)]
    assert db.query("SELECT run_id, config FROM runs WHERE run_id = 'r1'")[1] == [("r1", '{"bits": 16}')]
    assert db.query("SELECT count(*) FROM metrics WHERE run_id = 'r1'")[1] == [(2,)]
    assert db.query("SELECT qps, n_database FROM search_latency ORDER BY qps")[1] == [
        (5754.0, None),
        (14000.0, 70000),
    ]
    assert db.query("SELECT epoch, loss, step, val_map FROM training_log")[1] == [(0, 2.5, None, None)]
    assert db.query("SELECT model_id, map_at_100, map_at_all FROM leaderboard")[1] == [
        ("old-model", 0.5, 0.42)
    ]


def test_newer_schema_is_refused(db: DiagnosticsDB) -> None:
    con = duckdb.connect(str(db.path))
    con.execute("INSERT INTO schema_version VALUES (999, now()::TIMESTAMP)")
    con.close()
    with pytest.raises(SchemaVersionError, match="999"):
        DiagnosticsDB(db.path).migrate()


_HOLD_READ_ONLY = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def test_writer_waits_for_reader_process(db: DiagnosticsDB) -> None:
    hold = subprocess.Popen(
        [sys.executable, "-c", _HOLD_READ_ONLY, str(db.path), "1.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert hold.stdout is not None and hold.stdout.readline().strip() == "ready"
        with pytest.raises(DatabaseBusyError, match=str(db.path)):
            DiagnosticsDB(db.path, lock_timeout_s=0.2).start_run("evaluation", "c", "m")
        t0 = time.monotonic()
        run_id = db.start_run("evaluation", "c", "m")  # retries until the reader has gone
        assert time.monotonic() - t0 > 0.3
    finally:
        hold.wait(timeout=30)
    assert hold.returncode == 0
    assert db.query("SELECT run_id FROM runs")[1] == [(run_id,)]


_WRITER = """
import json, sys, time
from storage.diagnostics import DiagnosticsDB, insert_metrics, insert_pr_curve

path, worker, n, start_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
db = DiagnosticsDB(path)
time.sleep(max(0.0, start_at - time.time()))
times = []
for i in range(n):
    def write(run_id, con, i=i):
        insert_metrics(con, run_id, [("map", 100, worker + i / 1000), ("map", None, i), ("precision", 1, 0.5)])
        insert_pr_curve(con, run_id, [(0, 1.0, 0.1), (1, 0.9, 0.2)])
    db.record("evaluation", "cat", f"w{worker}", {"worker": worker, "i": i}, None, write)
    times.append(time.time())
print(json.dumps({"first": times[0], "last": times[-1]}))
"""

_READER = """
import json, sys, time
from storage.diagnostics import DiagnosticsDB

path, until = sys.argv[1], float(sys.argv[2])
db = DiagnosticsDB(path)
counts = []
while time.time() < until:
    try:
        counts.append(db.query("SELECT count(*) FROM runs")[1][0][0])
    except FileNotFoundError:
        pass
    except Exception as exc:  # the schema may not exist yet on the first few reads
        if "runs" not in str(exc):
            raise
    time.sleep(0.01)
print(json.dumps(counts))
"""


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "diag.duckdb"
    n = 50
    start_at = time.time() + 1.0
    env = _child_env()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_WRITER), str(path), str(w), str(n), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in (1, 2)
    ]
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(path), str(start_at + 2.0)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    outputs = [p.communicate(timeout=60) for p in writers]
    reader_out, reader_err = reader.communicate(timeout=60)
    for p, (_out, err) in zip(writers, outputs, strict=True):
        assert p.returncode == 0, err
    assert reader.returncode == 0, reader_err

    spans = [json.loads(out) for out, _ in outputs]
    assert max(s["first"] for s in spans) < min(s["last"] for s in spans), "writers did not overlap"
    counts = json.loads(reader_out)
    assert counts == sorted(counts)  # readers only ever see whole, committed runs

    db = DiagnosticsDB(path)
    assert db.query("SELECT count(*), count(DISTINCT run_id) FROM runs")[1] == [(2 * n, 2 * n)]
    assert db.query("SELECT model_id, count(*) FROM runs WHERE status = 'success' GROUP BY 1 ORDER BY 1")[
        1
    ] == [
        ("w1", n),
        ("w2", n),
    ]
    assert db.query("SELECT count(*) FROM metrics")[1] == [(3 * 2 * n,)]
    assert db.query("SELECT count(*) FROM pr_curve")[1] == [(2 * 2 * n,)]
    _, per_run = db.query(
        "SELECT r.run_id, count(m.run_id) FROM runs r LEFT JOIN metrics m USING (run_id) GROUP BY 1"
    )
    assert {c for _, c in per_run} == {3}
    _, values = db.query(
        "SELECT model_id, list(m.value ORDER BY m.value) FROM metrics m JOIN runs USING (run_id) "
        "WHERE name = 'map' AND k IS NULL GROUP BY 1 ORDER BY 1"
    )
    assert values == [("w1", [float(i) for i in range(n)]), ("w2", [float(i) for i in range(n)])]
    assert db.query("SELECT max(version) FROM schema_version")[1] == [(CURRENT_SCHEMA_VERSION,)]
    _, versions = db.query("SELECT count(*) FROM schema_version")
    assert versions == [(len(MIGRATIONS),)]  # the racing first writers migrated exactly once
