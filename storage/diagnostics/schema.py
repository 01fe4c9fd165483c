"""Diagnostics schema: tables, views and the versioned migrations that create them.

:data:`MIGRATIONS` is append-only; :func:`apply_migrations` upgrades an older file in place, never dropping
data, and refuses a file written by a newer schema. Timestamps are naive UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb

__all__ = [
    "CURRENT_SCHEMA_VERSION",
    "MIGRATIONS",
    "SchemaVersionError",
    "apply_migrations",
    "utcnow",
]

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

# The instance (copy-detection) protocol beside the label metrics: one row per (scorer, transform family,
# tie rule, metric, k); tie statistics have rule ''. The leaderboards gain, as last columns, its headline numbers (Hamming
# ranking, every family): copy recall@1 under the expected and the listed (row_id order) rank, and the
# share of queries whose first result ties with >= 99 others.
_INSTANCE_HEADLINE = """
        max(i.value) FILTER (WHERE i.rule = 'expected' AND i.name = 'recall' AND i.k = 1) AS copy_recall_at_1,
        max(i.value) FILTER (WHERE i.rule = 'listed' AND i.name = 'recall' AND i.k = 1) AS copy_recall_at_1_listed,
        max(i.value) FILTER (WHERE i.rule = 'expected' AND i.name = 'mrr') AS copy_mrr,
        max(i.value) FILTER (WHERE i.name = 'first_ties_ge_99') AS first_ties_ge_99"""
_INSTANCE_JOIN = (
    "LEFT JOIN (SELECT * FROM instance_metrics WHERE scorer = 'none' AND family = 'all') i USING (run_id)"
)

_V5_INSTANCE_METRICS: tuple[str, ...] = (
    """CREATE TABLE instance_metrics (
        run_id VARCHAR NOT NULL, scorer VARCHAR NOT NULL, family VARCHAR NOT NULL, rule VARCHAR NOT NULL,
        name VARCHAR NOT NULL, k INTEGER, value DOUBLE
    )""",
    f"""CREATE OR REPLACE VIEW leaderboard AS
    WITH label AS (
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
    )
    SELECT
        label.catalogue, label.model_id, label.map_at_100, label.map_at_1000, label.map_at_all,
        label.p_at_1, label.p_at_100, label.finished_at, label.run_id,{_INSTANCE_HEADLINE}
    FROM label {_INSTANCE_JOIN}
    GROUP BY ALL
    ORDER BY label.catalogue, label.map_at_all DESC NULLS LAST, label.model_id""",
    f"""CREATE OR REPLACE VIEW quality_leaderboard AS
    WITH label AS (
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
    )
    SELECT
        label.config, label.model, label.loss, label.bits, label.map_at_100, label.map_at_1000,
        label.p_at_1, label.p_at_100, label.mean_ones_rate, label.mean_entropy,
        label.intra_class_hamming, label.inter_class_hamming, label.best_val_map, label.epochs_run,
        label.train_minutes, label.train_images_per_s, label.catalogue, label.finished_at, label.run_id,{_INSTANCE_HEADLINE}
    FROM label {_INSTANCE_JOIN}
    GROUP BY ALL
    ORDER BY label.map_at_100 DESC NULLS LAST, label.finished_at DESC""",
)

#: Ordered (version, statements) pairs. Append only; never edit or reorder a released entry.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, _V1_TABLES),
    (2, _V2_COLUMNS_AND_VIEWS),
    (3, _V3_INGEST),
    (4, _V4_QUALITY_BENCH),
    (5, _V5_INSTANCE_METRICS),
)
CURRENT_SCHEMA_VERSION: int = MIGRATIONS[-1][0]

_SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)"
)


class SchemaVersionError(RuntimeError):
    """The file was written by a newer vitrieve whose schema this code does not know."""


def utcnow() -> datetime:
    """Now as a naive UTC timestamp (the form every TIMESTAMP column stores)."""
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
            con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, utcnow()])
            con.commit()
        except BaseException:
            con.rollback()
            raise
        current = version
    return current
