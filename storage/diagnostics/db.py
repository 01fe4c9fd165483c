"""``DiagnosticsDB``: the diagnostics DuckDB file, its runs, writes and read-only queries.

One ``runs`` row per evaluation / reindex / benchmark / training run; every other table carries its
``run_id``. DuckDB allows one read-write process *or* many read-only ones, so:

* every write opens a short read-write connection, serialised across processes by
  ``filelock.FileLock(<path>.lock)``, and commits exactly one transaction;
* opening is retried with backoff while another process (for example an analyst's read-only session)
  holds DuckDB's own file lock, up to ``lock_timeout_s`` (default 30 s);
* :meth:`DiagnosticsDB.query` opens the file ``read_only=True`` and rejects anything but reads before
  executing it.

Rows are written by the ``insert_*`` writers of :mod:`storage.diagnostics.rows` inside :meth:`record`
(a whole run in one transaction) or :meth:`append` (a step of a run begun with :meth:`start_run`).
Writers create or upgrade the schema first (:func:`~storage.diagnostics.schema.apply_migrations`).
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import filelock

from storage.diagnostics.guard import check_read_only
from storage.diagnostics.rows import (
    insert_metrics,
    insert_rejected,
    insert_run,
    mark_run_finished,
    require_run,
)
from storage.diagnostics.schema import apply_migrations

__all__ = ["DatabaseBusyError", "DiagnosticsDB"]


class DatabaseBusyError(TimeoutError):
    """Another process kept the database locked longer than the configured timeout."""


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
                "nested write to the diagnostics DB; inside record() or append(), use the connection passed to write()"
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
            insert_run(con, run_id, kind, catalogue, model_id, config, dagster_run_id)
        return run_id

    def finish_run(self, run_id: str, status: str = "success") -> None:
        """Set ``finished_at`` (now) and ``status``; KeyError if the run does not exist."""
        with self._write() as con:
            mark_run_finished(con, run_id, status)

    def append(self, run_id: str, write: Callable[[str, duckdb.DuckDBPyConnection], None]) -> None:
        """Call ``write(run_id, con)`` in one transaction on a run begun with :meth:`start_run`.

        For runs that log as they go (e.g. one ``training_log`` row per epoch) before :meth:`finish_run`.
        KeyError if the run does not exist; if ``write`` raises, nothing it inserted is kept.
        """
        with self._write() as con:
            require_run(con, run_id)
            write(run_id, con)

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
        exception re-raised. ``write`` should insert with the ``insert_*`` writers of
        :mod:`storage.diagnostics.rows` on ``con``.
        """
        run_id = uuid.uuid4().hex
        with self._write() as con:
            insert_run(con, run_id, kind, catalogue, model_id, config, dagster_run_id)
            write(run_id, con)
            mark_run_finished(con, run_id, status)
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
