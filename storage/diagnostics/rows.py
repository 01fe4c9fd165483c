"""Row writers for the diagnostics tables, called on a connection inside one write transaction.

``insert_*`` take a run id and rows, validate them, insert each table's rows in one statement and return the
row count; :meth:`DiagnosticsDB.record` (or :meth:`DiagnosticsDB.append`) supplies the connection.
``insert_run`` / ``mark_run_finished`` / ``require_run`` manage the ``runs`` row itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import duckdb

from storage.diagnostics.schema import utcnow

__all__ = [
    "mark_run_finished",
    "insert_bit_stats",
    "insert_instance_metrics",
    "insert_metrics",
    "insert_per_class",
    "insert_pr_curve",
    "insert_rejected",
    "insert_run",
    "insert_search_latency",
    "insert_training_log",
    "require_run",
]


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


def insert_instance_metrics(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    rows: Iterable[tuple[str, str, str, str, int | None, float]],
) -> int:
    """Insert ``(scorer, family, rule, name, k, value)`` rows of the instance (copy) protocol
    (``ml.instance_metrics.metric_rows``)."""
    rows = list(rows)
    return _insert_columns(
        con,
        "instance_metrics",
        run_id,
        {
            "scorer": ("VARCHAR", [str(r[0]) for r in rows]),
            "family": ("VARCHAR", [str(r[1]) for r in rows]),
            "rule": ("VARCHAR", [str(r[2]) for r in rows]),
            "name": ("VARCHAR", [str(r[3]) for r in rows]),
            "k": ("INTEGER", [_opt_int(r[4]) for r in rows]),
            "value": ("DOUBLE", [_opt_float(r[5]) for r in rows]),
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


def insert_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    kind: str,
    catalogue: str | None,
    model_id: str | None,
    config: dict | None,
    dagster_run_id: str | None,
) -> None:
    """Insert the ``runs`` row of a new run, status 'running'; ``config`` is stored as sorted JSON."""
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
            utcnow(),
        ],
    )


def _json_default(o: Any) -> Any:
    """JSON fallback for config values: numpy scalars/arrays via tolist(), paths and the rest as str."""
    return o.tolist() if hasattr(o, "tolist") else os.fspath(o) if isinstance(o, os.PathLike) else str(o)


def mark_run_finished(con: duckdb.DuckDBPyConnection, run_id: str, status: str) -> None:
    """Set the run's ``finished_at`` (now) and ``status``; KeyError if there is no such run."""
    done = con.execute(
        "UPDATE runs SET finished_at = ?, status = ? WHERE run_id = ? RETURNING run_id",
        [utcnow(), status, run_id],
    ).fetchall()
    if not done:
        raise KeyError(f"no run {run_id!r} in the diagnostics database")


def require_run(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """KeyError unless the run exists."""
    if not con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
        raise KeyError(f"no run {run_id!r} in the diagnostics database; call start_run first")
