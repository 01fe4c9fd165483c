"""Retrieval diagnostics in a local DuckDB file.

One ``runs`` row per evaluation / reindex / benchmark / training run; every other table carries its
``run_id``. DuckDB allows one read-write process *or* many read-only ones, so:

* every write opens a short read-write connection, serialised across processes by
  ``filelock.FileLock(<path>.lock)``, and commits exactly one transaction;
* opening is retried with backoff while another process (for example an analyst's read-only session)
  holds DuckDB's own file lock, up to ``lock_timeout_s`` (default 30 s);
* :meth:`DiagnosticsDB.query` opens the file ``read_only=True`` and rejects anything but reads before
  executing it.

The schema is versioned (:data:`MIGRATIONS`); writers upgrade an older file in place and never drop data.
Timestamps are naive UTC.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import filelock

__all__ = [
    "CURRENT_SCHEMA_VERSION",
    "MIGRATIONS",
    "DatabaseBusyError",
    "DiagnosticsDB",
    "ReadOnlyQueryError",
    "SchemaVersionError",
    "apply_migrations",
    "check_read_only",
    "insert_bit_stats",
    "insert_metrics",
    "insert_per_class",
    "insert_pr_curve",
    "insert_rejected",
    "insert_search_latency",
    "insert_training_log",
]


# --------------------------------------------------------------------------------------------- schema

_V1_TABLES: tuple[str, ...] = (
    """CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,
        kind VARCHAR NOT NULL,
        catalogue VARCHAR,
        model_id VARCHAR,
        dagster_run_id VARCHAR,
        config JSON,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        status VARCHAR NOT NULL
    )""",
    "CREATE TABLE metrics (run_id VARCHAR NOT NULL, name VARCHAR NOT NULL, k INTEGER, value DOUBLE)",
    "CREATE TABLE pr_curve (run_id VARCHAR NOT NULL, radius INTEGER NOT NULL, precision DOUBLE, recall DOUBLE)",
    "CREATE TABLE bit_stats (run_id VARCHAR NOT NULL, bit INTEGER NOT NULL, ones_rate DOUBLE, entropy DOUBLE)",
    "CREATE TABLE per_class (run_id VARCHAR NOT NULL, label BIGINT NOT NULL, ap DOUBLE, n BIGINT)",
    """CREATE TABLE search_latency (
        run_id VARCHAR NOT NULL, index_kind VARCHAR NOT NULL, threads INTEGER, batch INTEGER,
        p50_ms DOUBLE, p99_ms DOUBLE, qps DOUBLE, recall_at_k DOUBLE
    )""",
    """CREATE TABLE training_log (
        run_id VARCHAR NOT NULL, epoch INTEGER, loss DOUBLE, lr DOUBLE, images_per_s DOUBLE, seconds DOUBLE
    )""",
)

# Latest successful evaluation run per (catalogue, model_id); ties broken deterministically.
_LATEST_EVAL_RUNS = """
    SELECT run_id, catalogue, model_id, finished_at
    FROM runs
    WHERE kind = 'evaluation' AND status = 'success'
    QUALIFY row_number() OVER (
        PARTITION BY catalogue, model_id ORDER BY finished_at DESC NULLS LAST, started_at DESC, run_id DESC
    ) = 1
"""

_V2_COLUMNS_AND_VIEWS: tuple[str, ...] = (
    "ALTER TABLE search_latency ADD COLUMN k INTEGER",
    "ALTER TABLE search_latency ADD COLUMN n_database BIGINT",
    "ALTER TABLE search_latency ADD COLUMN n_queries BIGINT",
    "ALTER TABLE training_log ADD COLUMN step BIGINT",
    "ALTER TABLE training_log ADD COLUMN val_map DOUBLE",
    f"CREATE OR REPLACE VIEW latest_evaluation_runs AS {_LATEST_EVAL_RUNS}",
    """CREATE OR REPLACE VIEW latest_metrics AS
    SELECT r.catalogue, r.model_id, m.name, m.k, m.value, r.run_id, r.finished_at
    FROM metrics m JOIN runs r USING (run_id)
    WHERE r.kind = 'evaluation' AND r.status = 'success'
    QUALIFY row_number() OVER (
        PARTITION BY r.catalogue, r.model_id, m.name, m.k
        ORDER BY r.finished_at DESC NULLS LAST, r.started_at DESC, r.run_id DESC
    ) = 1""",
    """CREATE OR REPLACE VIEW leaderboard AS
    SELECT
        e.catalogue,
        e.model_id,
        max(m.value) FILTER (WHERE m.name = 'map' AND m.k = 100) AS map_at_100,
        max(m.value) FILTER (WHERE m.name = 'map' AND m.k = 1000) AS map_at_1000,
        max(m.value) FILTER (WHERE m.name = 'map' AND m.k IS NULL) AS map_at_all,
        max(m.value) FILTER (WHERE m.name = 'precision' AND m.k = 1) AS p_at_1,
        max(m.value) FILTER (WHERE m.name = 'precision' AND m.k = 100) AS p_at_100,
        e.finished_at,
        e.run_id
    FROM latest_evaluation_runs e LEFT JOIN metrics m USING (run_id)
    GROUP BY e.catalogue, e.model_id, e.finished_at, e.run_id
    ORDER BY e.catalogue, map_at_all DESC NULLS LAST, e.model_id""",
)

_V3_INGEST: tuple[str, ...] = (
    "CREATE TABLE rejected (run_id VARCHAR NOT NULL, item VARCHAR NOT NULL, reason VARCHAR NOT NULL, detail VARCHAR)",
    # Items rejected by the latest successful-or-failed ingest of each catalogue.
    """CREATE OR REPLACE VIEW latest_rejected AS
    SELECT r.catalogue, x.item, x.reason, x.detail, r.run_id, r.finished_at
    FROM rejected x JOIN runs r USING (run_id)
    WHERE r.run_id IN (
        SELECT run_id FROM runs WHERE kind = 'ingest'
        QUALIFY row_number() OVER (PARTITION BY catalogue ORDER BY started_at DESC, run_id DESC) = 1
    )""",
)

_V4_QUALITY_BENCH: tuple[str, ...] = (
    # One row per `vitrieve bench quality` run (runs.kind = 'bench-quality'), best mAP@100 first.
    """CREATE OR REPLACE VIEW quality_leaderboard AS
    SELECT
        r.model_id AS config,
        r.config ->> '$.spec.model' AS model,
        r.config ->> '$.train.loss' AS loss,
        CAST(r.config ->> '$.spec.bits' AS INTEGER) AS bits,
        max(m.value) FILTER (WHERE m.name = 'map' AND m.k = 100) AS map_at_100,
        max(m.value) FILTER (WHERE m.name = 'map' AND m.k = 1000) AS map_at_1000,
        max(m.value) FILTER (WHERE m.name = 'precision' AND m.k = 1) AS p_at_1,
        max(m.value) FILTER (WHERE m.name = 'precision' AND m.k = 100) AS p_at_100,
        max(m.value) FILTER (WHERE m.name = 'mean_ones_rate') AS mean_ones_rate,
        max(m.value) FILTER (WHERE m.name = 'mean_entropy') AS mean_entropy,
        max(m.value) FILTER (WHERE m.name = 'intra_class_hamming') AS intra_class_hamming,
        max(m.value) FILTER (WHERE m.name = 'inter_class_hamming') AS inter_class_hamming,
        max(m.value) FILTER (WHERE m.name = 'best_val_map') AS best_val_map,
        max(m.value) FILTER (WHERE m.name = 'epochs_run') AS epochs_run,
        max(m.value) FILTER (WHERE m.name = 'train_minutes') AS train_minutes,
        max(m.value) FILTER (WHERE m.name = 'train_images_per_s') AS train_images_per_s,
        r.catalogue, r.finished_at, r.run_id
    FROM runs r LEFT JOIN metrics m USING (run_id)
    WHERE r.kind = 'bench-quality' AND r.status = 'success'
    GROUP BY r.model_id, r.config, r.catalogue, r.finished_at, r.run_id
    ORDER BY map_at_100 DESC NULLS LAST, r.finished_at DESC""",
)

#: Ordered (version, statements) pairs. Append only; never edit or reorder a released entry.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, _V1_TABLES),
    (2, _V2_COLUMNS_AND_VIEWS),
    (3, _V3_INGEST),
    (4, _V4_QUALITY_BENCH),
)
CURRENT_SCHEMA_VERSION: int = MIGRATIONS[-1][0]

_SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)"
)


class SchemaVersionError(RuntimeError):
    """The file was written by a newer vitrieve whose schema this code does not know."""


class DatabaseBusyError(TimeoutError):
    """Another process kept the database locked longer than the configured timeout."""


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def apply_migrations(con: duckdb.DuckDBPyConnection, target: int | None = None) -> int:
    """Apply pending migrations up to ``target`` (default: latest), each in its own transaction.

    Returns the schema version afterwards. The caller must hold the write lock.
    """
    target = CURRENT_SCHEMA_VERSION if target is None else target
    con.execute(_SCHEMA_VERSION_DDL)
    row = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    current = int(row[0]) if row else 0
    if current > CURRENT_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"diagnostics database has schema version {current}, newer than this code supports "
            f"({CURRENT_SCHEMA_VERSION}); upgrade vitrieve"
        )
    for version, statements in MIGRATIONS:
        if version <= current or version > target:
            continue
        con.begin()
        try:
            for statement in statements:
                con.execute(statement)
            con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, _utcnow()])
            con.commit()
        except BaseException:
            con.rollback()
            raise
        current = version
    return current


# ------------------------------------------------------------------------------------- read-only guard


class ReadOnlyQueryError(ValueError):
    """A statement given to :meth:`DiagnosticsDB.query` is not a read."""

    def __init__(self, statement_kind: str, detail: str = "") -> None:
        self.statement_kind = statement_kind
        message = (
            f"{statement_kind} statements are not allowed: the `sql` verb (DiagnosticsDB.query) is "
            "read-only; use SELECT, EXPLAIN, SHOW, DESCRIBE, SUMMARIZE or an introspection PRAGMA"
        )
        super().__init__(f"{message} ({detail})" if detail else message)


_ST = duckdb.StatementType
_READ_PRAGMAS = frozenset(
    {
        "table_info",
        "show",
        "show_tables",
        "show_tables_expanded",
        "show_databases",
        "database_list",
        "database_size",
        "version",
        "storage_info",
        "functions",
        "collations",
        "platform",
        "metadata_info",
        "user_agent",
    }
)
# Query-node types a pure read may contain; DuckDB also parses e.g. `WITH x AS (INSERT ...) SELECT` as SELECT.
_READ_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
_EXPLAIN_RE = re.compile(
    r"^\s*EXPLAIN\s+(?:ANALYZE\s+|ANALYSE\s+|\((?:[^()]|\([^()]*\))*\)\s*)?(?P<inner>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_PRAGMA_RE = re.compile(r"^\s*PRAGMA\s+(?P<name>\w+)", re.IGNORECASE)


# A private in-memory connection for json_serialize_sql; opening one per query costs ~15 ms.
_parser_lock = threading.Lock()
_parser_con: duckdb.DuckDBPyConnection | None = None
_parser_pid: int | None = None


def _kind(statement: Any) -> str:
    return str(statement.type).rsplit(".", 1)[-1]


def _write_nodes(sql: str) -> set[str]:
    """Query-node types other than reads inside a SELECT statement (empty if it cannot be serialised)."""
    global _parser_con, _parser_pid
    with _parser_lock:
        if _parser_con is None or _parser_pid != os.getpid():  # never reuse a connection across fork
            _parser_con, _parser_pid = duckdb.connect(":memory:"), os.getpid()
        tree = json.loads(_parser_con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    if tree.get("error"):
        return set()  # not serialisable (e.g. mixed parameters): read_only=True still guards it
    found: set[str] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            t = node.get("type")
            if isinstance(t, str) and t.endswith("_NODE") and t not in _READ_NODES:
                found.add(t)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _check_statement(statement: Any, depth: int = 0) -> None:
    kind = _kind(statement)
    if statement.type == _ST.SELECT:
        nodes = _write_nodes(statement.query)
        if nodes:
            verbs = ", ".join(sorted(n.removesuffix("_QUERY_NODE").removesuffix("_NODE") for n in nodes))
            raise ReadOnlyQueryError(verbs, "inside a SELECT / common table expression")
        return
    if statement.type == _ST.EXPLAIN and depth == 0:
        m = _EXPLAIN_RE.match(statement.query)
        try:
            inner = duckdb.extract_statements(m.group("inner")) if m else []
        except duckdb.Error:
            inner = []
        if len(inner) != 1:
            raise ReadOnlyQueryError(kind, "could not verify the explained statement")
        _check_statement(inner[0], depth + 1)
        return
    if statement.type == _ST.PRAGMA:
        m = _PRAGMA_RE.match(statement.query)
        if m and m.group("name").lower() in _READ_PRAGMAS:
            return
        raise ReadOnlyQueryError(kind, f"only {', '.join(sorted(_READ_PRAGMAS))} pragmas are allowed")
    raise ReadOnlyQueryError(kind)


def check_read_only(sql: str) -> list[str]:
    """Parse ``sql`` with DuckDB's parser; raise :class:`ReadOnlyQueryError` unless every statement reads.

    Returns the individual statements. Raises ``ValueError`` for empty input and DuckDB's
    ``ParserException`` for invalid SQL.
    """
    statements = duckdb.extract_statements(sql)
    if not statements:
        raise ValueError("no SQL statement given")
    for i, statement in enumerate(statements, 1):
        try:
            _check_statement(statement)
        except ReadOnlyQueryError as exc:
            if len(statements) > 1:
                raise ReadOnlyQueryError(exc.statement_kind, f"statement {i} of {len(statements)}") from None
            raise
    return [s.query for s in statements]


# ----------------------------------------------------------------------------------------- row helpers


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _insert_columns(
    con: duckdb.DuckDBPyConnection, table: str, run_id: str, columns: dict[str, tuple[str, list[Any]]]
) -> int:
    """Insert column lists (same length) plus ``run_id`` in one statement; returns the row count."""
    lengths = {len(values) for _, values in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"{table}: column lists differ in length: {sorted(lengths)}")
    n = lengths.pop()
    if n == 0:
        return 0
    names = ", ".join(columns)
    selects = ", ".join(f"unnest(?::{sql_type}[])" for sql_type, _ in columns.values())
    con.execute(
        f"INSERT INTO {table} (run_id, {names}) SELECT ?, {selects}",
        [run_id, *(values for _, values in columns.values())],
    )
    return n


def _dict_rows(
    table: str, rows: Iterable[dict], required: Sequence[str], optional: Sequence[str]
) -> list[dict]:
    allowed = set(required) | set(optional)
    out = []
    for row in rows:
        missing = [k for k in required if k not in row]
        unknown = sorted(set(row) - allowed)
        if missing or unknown:
            raise ValueError(
                f"{table} row: missing keys {missing}, unknown keys {unknown}; allowed {sorted(allowed)}"
            )
        out.append(row)
    return out


def insert_metrics(
    con: duckdb.DuckDBPyConnection, run_id: str, rows: Iterable[tuple[str, int | None, float]]
) -> int:
    """Insert ``(name, k, value)`` rows; ``k`` is None when not applicable (e.g. mAP over the whole database)."""
    rows = list(rows)
    return _insert_columns(
        con,
        "metrics",
        run_id,
        {
            "name": ("VARCHAR", [str(r[0]) for r in rows]),
            "k": ("INTEGER", [_opt_int(r[1]) for r in rows]),
            "value": ("DOUBLE", [_opt_float(r[2]) for r in rows]),
        },
    )


def insert_pr_curve(
    con: duckdb.DuckDBPyConnection, run_id: str, rows: Iterable[tuple[int, float, float]]
) -> int:
    """Insert ``(radius, precision, recall)`` rows."""
    rows = list(rows)
    return _insert_columns(
        con,
        "pr_curve",
        run_id,
        {
            "radius": ("INTEGER", [int(r[0]) for r in rows]),
            "precision": ("DOUBLE", [_opt_float(r[1]) for r in rows]),
            "recall": ("DOUBLE", [_opt_float(r[2]) for r in rows]),
        },
    )


def insert_bit_stats(
    con: duckdb.DuckDBPyConnection, run_id: str, ones_rate: Sequence[float], entropy: Sequence[float]
) -> int:
    """Insert one row per bit index (0-based)."""
    ones = [_opt_float(v) for v in ones_rate]
    ent = [_opt_float(v) for v in entropy]
    if len(ones) != len(ent):
        raise ValueError(f"bit_stats: {len(ones)} ones_rate values but {len(ent)} entropy values")
    return _insert_columns(
        con,
        "bit_stats",
        run_id,
        {
            "bit": ("INTEGER", list(range(len(ones)))),
            "ones_rate": ("DOUBLE", ones),
            "entropy": ("DOUBLE", ent),
        },
    )


def insert_per_class(
    con: duckdb.DuckDBPyConnection, run_id: str, rows: Iterable[tuple[int, float, int]]
) -> int:
    """Insert ``(label, ap, n)`` rows."""
    rows = list(rows)
    return _insert_columns(
        con,
        "per_class",
        run_id,
        {
            "label": ("BIGINT", [int(r[0]) for r in rows]),
            "ap": ("DOUBLE", [_opt_float(r[1]) for r in rows]),
            "n": ("BIGINT", [_opt_int(r[2]) for r in rows]),
        },
    )


def insert_rejected(con: duckdb.DuckDBPyConnection, run_id: str, rows: Iterable[tuple[str, str, str]]) -> int:
    """Insert ``(item, reason, detail)`` rows: catalogue items an ingest run rejected."""
    rows = list(rows)
    return _insert_columns(
        con,
        "rejected",
        run_id,
        {
            "item": ("VARCHAR", [str(r[0]) for r in rows]),
            "reason": ("VARCHAR", [str(r[1]) for r in rows]),
            "detail": ("VARCHAR", [None if r[2] is None else str(r[2]) for r in rows]),
        },
    )


_LATENCY_COLUMNS = {
    "index_kind": ("VARCHAR", str),
    "threads": ("INTEGER", _opt_int),
    "batch": ("INTEGER", _opt_int),
    "p50_ms": ("DOUBLE", _opt_float),
    "p99_ms": ("DOUBLE", _opt_float),
    "qps": ("DOUBLE", _opt_float),
    "recall_at_k": ("DOUBLE", _opt_float),
    "k": ("INTEGER", _opt_int),
    "n_database": ("BIGINT", _opt_int),
    "n_queries": ("BIGINT", _opt_int),
}
_LATENCY_OPTIONAL = ("recall_at_k", "k")

_TRAINING_COLUMNS = {
    "epoch": ("INTEGER", _opt_int),
    "step": ("BIGINT", _opt_int),
    "loss": ("DOUBLE", _opt_float),
    "lr": ("DOUBLE", _opt_float),
    "images_per_s": ("DOUBLE", _opt_float),
    "seconds": ("DOUBLE", _opt_float),
    "val_map": ("DOUBLE", _opt_float),
}
_TRAINING_OPTIONAL = ("step", "val_map")


def _insert_dicts(
    con: duckdb.DuckDBPyConnection,
    table: str,
    run_id: str,
    rows: Iterable[dict],
    spec: dict[str, tuple[str, Callable[[Any], Any]]],
    optional: Sequence[str],
) -> int:
    required = [c for c in spec if c not in optional]
    checked = _dict_rows(table, rows, required, optional)
    columns = {c: (sql_type, [conv(r.get(c)) for r in checked]) for c, (sql_type, conv) in spec.items()}
    return _insert_columns(con, table, run_id, columns)


def insert_search_latency(con: duckdb.DuckDBPyConnection, run_id: str, rows: Iterable[dict]) -> int:
    """Insert dict rows with keys index_kind, threads, batch, p50_ms, p99_ms, qps, n_database, n_queries
    and optional recall_at_k, k."""
    return _insert_dicts(con, "search_latency", run_id, rows, _LATENCY_COLUMNS, _LATENCY_OPTIONAL)


def insert_training_log(con: duckdb.DuckDBPyConnection, run_id: str, rows: Iterable[dict]) -> int:
    """Insert dict rows with keys epoch, loss, lr, images_per_s, seconds and optional step, val_map."""
    return _insert_dicts(con, "training_log", run_id, rows, _TRAINING_COLUMNS, _TRAINING_OPTIONAL)


def _insert_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    kind: str,
    catalogue: str | None,
    model_id: str | None,
    config: dict | None,
    dagster_run_id: str | None,
) -> None:
    if not kind:
        raise ValueError("run kind must be a non-empty string")
    con.execute(
        "INSERT INTO runs (run_id, kind, catalogue, model_id, dagster_run_id, config, started_at, status) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'running')",
        [
            run_id,
            kind,
            catalogue,
            model_id,
            dagster_run_id,
            None if config is None else json.dumps(config, sort_keys=True, default=_json_default),
            _utcnow(),
        ],
    )


def _json_default(o: Any) -> Any:
    """JSON fallback for config values: numpy scalars/arrays via tolist(), paths and the rest as str."""
    return o.tolist() if hasattr(o, "tolist") else os.fspath(o) if isinstance(o, os.PathLike) else str(o)


def _finish_run(con: duckdb.DuckDBPyConnection, run_id: str, status: str) -> None:
    done = con.execute(
        "UPDATE runs SET finished_at = ?, status = ? WHERE run_id = ? RETURNING run_id",
        [_utcnow(), status, run_id],
    ).fetchall()
    if not done:
        raise KeyError(f"no run {run_id!r} in the diagnostics database")


def _require_run(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    if not con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
        raise KeyError(f"no run {run_id!r} in the diagnostics database; call start_run first")


# ------------------------------------------------------------------------------------------- database

# Poll the writer lock often: filelock polls, and a writer in a loop re-takes the lock within microseconds of
# releasing it, so a slow poll starves the other writers.
_LOCK_POLL_S = 0.001
_WRITING = threading.local()  # paths this thread is currently writing, to catch nested writes


class DiagnosticsDB:
    """Diagnostics tables in one local DuckDB file; short connections, one transaction per write."""

    def __init__(self, path: str | os.PathLike, *, lock_timeout_s: float = 30.0) -> None:
        text = os.fspath(path)
        if "://" in str(text):
            raise ValueError(f"diagnostics DB must be a local file path, not a URI: {text}")
        self.path = Path(text).expanduser()
        self.lock_timeout_s = float(lock_timeout_s)
        self._schema_version: int | None = None

    def __repr__(self) -> str:
        return f"DiagnosticsDB({str(self.path)!r})"

    # -- connections

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the file, retrying with backoff while another connection holds DuckDB's lock."""
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.005
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                text = str(exc).lower()
                busy = any(
                    m in text for m in ("could not set lock", "conflicting lock", "different configuration")
                )
                if not busy:
                    raise
                if time.monotonic() >= deadline:
                    raise DatabaseBusyError(
                        f"{self.path} stayed locked for {self.lock_timeout_s:.0f} s "
                        "(another process, e.g. an open SQL session, holds it)"
                    ) from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)

    @contextmanager
    def _write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Yield a read-write connection inside one transaction, under the cross-process file lock."""
        key = str(self.path.resolve())
        if not hasattr(_WRITING, "paths"):
            _WRITING.paths = set()
        active: set[str] = _WRITING.paths
        if key in active:
            raise RuntimeError(
                "nested write to the diagnostics DB; inside record(), use the connection passed to write()"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.path) + ".lock", timeout=self.lock_timeout_s)
        try:
            lock.acquire(poll_interval=_LOCK_POLL_S)
        except filelock.Timeout as exc:
            raise DatabaseBusyError(
                f"another writer held {lock.lock_file} for {self.lock_timeout_s:.0f} s"
            ) from exc
        active.add(key)
        try:
            if not self.path.exists():
                self._schema_version = None
            con = self._connect(read_only=False)
            try:
                if self._schema_version is None:
                    self._schema_version = apply_migrations(con)
                con.begin()
                try:
                    yield con
                    con.commit()
                except BaseException:
                    con.rollback()
                    raise
            finally:
                con.close()
        finally:
            active.discard(key)
            lock.release()

    # -- schema

    def migrate(self) -> int:
        """Create or upgrade the schema (idempotent); returns the schema version."""
        self._schema_version = None
        with self._write():
            pass
        assert self._schema_version is not None
        return self._schema_version

    # -- writers

    def start_run(
        self,
        kind: str,
        catalogue: str | None,
        model_id: str | None,
        config: dict | None = None,
        dagster_run_id: str | None = None,
    ) -> str:
        """Insert a ``runs`` row with status 'running'; returns the new run id (uuid4 hex)."""
        run_id = uuid.uuid4().hex
        with self._write() as con:
            _insert_run(con, run_id, kind, catalogue, model_id, config, dagster_run_id)
        return run_id

    def finish_run(self, run_id: str, status: str = "success") -> None:
        """Set ``finished_at`` (now) and ``status``; KeyError if the run does not exist."""
        with self._write() as con:
            _finish_run(con, run_id, status)

    def _write_rows(self, run_id: str, insert: Callable[[duckdb.DuckDBPyConnection], int]) -> None:
        with self._write() as con:
            _require_run(con, run_id)
            insert(con)

    def write_metrics(self, run_id: str, rows: Iterable[tuple[str, int | None, float]]) -> None:
        """Append ``(name, k, value)`` rows; ``k`` None when not applicable."""
        rows = list(rows)
        self._write_rows(run_id, lambda con: insert_metrics(con, run_id, rows))

    def write_pr_curve(self, run_id: str, rows: Iterable[tuple[int, float, float]]) -> None:
        """Append ``(radius, precision, recall)`` rows."""
        rows = list(rows)
        self._write_rows(run_id, lambda con: insert_pr_curve(con, run_id, rows))

    def write_bit_stats(self, run_id: str, ones_rate: Sequence[float], entropy: Sequence[float]) -> None:
        """Append one row per bit index."""
        self._write_rows(run_id, lambda con: insert_bit_stats(con, run_id, ones_rate, entropy))

    def write_per_class(self, run_id: str, rows: Iterable[tuple[int, float, int]]) -> None:
        """Append ``(label, ap, n)`` rows."""
        rows = list(rows)
        self._write_rows(run_id, lambda con: insert_per_class(con, run_id, rows))

    def write_search_latency(self, run_id: str, rows: Iterable[dict]) -> None:
        """Append search benchmark rows (see :func:`insert_search_latency` for keys)."""
        rows = list(rows)
        self._write_rows(run_id, lambda con: insert_search_latency(con, run_id, rows))

    def write_training_log(self, run_id: str, rows: Iterable[dict]) -> None:
        """Append training log rows (see :func:`insert_training_log` for keys)."""
        rows = list(rows)
        self._write_rows(run_id, lambda con: insert_training_log(con, run_id, rows))

    def record(
        self,
        kind: str,
        catalogue: str | None,
        model_id: str | None,
        config: dict | None,
        dagster_run_id: str | None,
        write: Callable[[str, duckdb.DuckDBPyConnection], None],
        status: str = "success",
    ) -> str:
        """Start a run, call ``write(run_id, con)``, finish the run: one connection, one transaction.

        All or nothing: if ``write`` raises, everything (the runs row included) is rolled back and the
        exception re-raised. ``write`` should insert with the ``insert_*`` helpers of this module on ``con``.
        """
        run_id = uuid.uuid4().hex
        with self._write() as con:
            _insert_run(con, run_id, kind, catalogue, model_id, config, dagster_run_id)
            write(run_id, con)
            _finish_run(con, run_id, status)
        return run_id

    def record_ingest(
        self,
        catalogue: str,
        config: dict | None,
        rejected: Iterable[tuple[str, str, str]],
        counts: dict[str, float],
        dagster_run_id: str | None = None,
        status: str = "success",
    ) -> str:
        """One ``ingest`` run: its rejected ``(item, reason, detail)`` rows and ``ingest_<name>`` count metrics."""
        rejected = list(rejected)

        def write(run_id: str, con: duckdb.DuckDBPyConnection) -> None:
            insert_rejected(con, run_id, rejected)
            insert_metrics(con, run_id, [(f"ingest_{k}", None, float(v)) for k, v in counts.items()])

        return self.record("ingest", catalogue, None, config, dagster_run_id, write, status)

    # -- reader

    def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
    ) -> tuple[list[str], list[tuple]]:
        """Run read-only SQL; returns (column names, rows) of the last statement.

        Statements are checked with DuckDB's parser before anything runs (:class:`ReadOnlyQueryError`),
        and the file is opened ``read_only=True``. ``params`` bind to a single statement.
        """
        statements = check_read_only(sql)
        if str(self.path.resolve()) in getattr(_WRITING, "paths", ()):
            raise RuntimeError(
                "query() inside a write to the same database; read through the write connection"
            )
        if params is not None and len(statements) > 1:
            raise ValueError("query parameters need a single SQL statement")
        if not self.path.is_file():
            raise FileNotFoundError(errno.ENOENT, "diagnostics database does not exist", str(self.path))
        con = self._connect(read_only=True)
        try:
            cur = con.execute(sql, params) if params is not None else con.execute(sql)
            columns = [d[0] for d in cur.description or []]
            return columns, cur.fetchall() if cur.description else []
        finally:
            con.close()
