"""Retrieval diagnostics in a local DuckDB file.

* :mod:`~storage.diagnostics.schema`: tables, views and versioned migrations;
* :mod:`~storage.diagnostics.guard`: the read-only check behind ``DiagnosticsDB.query``;
* :mod:`~storage.diagnostics.rows`: the ``insert_*`` row writers;
* :mod:`~storage.diagnostics.db`: :class:`DiagnosticsDB` (locking, runs, writes, queries).
"""

from storage.diagnostics.db import DatabaseBusyError, DiagnosticsDB
from storage.diagnostics.guard import ReadOnlyQueryError, check_read_only
from storage.diagnostics.rows import (
    insert_bit_stats,
    insert_instance_metrics,
    insert_metrics,
    insert_per_class,
    insert_pr_curve,
    insert_rejected,
    insert_search_latency,
    insert_training_log,
)
from storage.diagnostics.schema import (
    CURRENT_SCHEMA_VERSION,
    MIGRATIONS,
    SchemaVersionError,
    apply_migrations,
)

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
    "insert_instance_metrics",
    "insert_metrics",
    "insert_per_class",
    "insert_pr_curve",
    "insert_rejected",
    "insert_search_latency",
    "insert_training_log",
]
