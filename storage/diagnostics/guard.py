"""The read-only check behind :meth:`DiagnosticsDB.query` (the ``sql`` verb).

Every statement is parsed with DuckDB's own parser and must be a read: SELECT (with no write node hidden in
a common table expression), EXPLAIN of a read, SHOW / DESCRIBE / SUMMARIZE, or an introspection PRAGMA.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any

import duckdb

__all__ = ["ReadOnlyQueryError", "check_read_only"]


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
