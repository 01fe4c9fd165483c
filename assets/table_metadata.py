"""Dagster's table metadata (``dagster/column_schema``, ``dagster/row_count``) of the Parquet assets, from the
Arrow schema each one writes."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pyarrow as pa


def table_metadata(schema: pa.Schema, rows: int) -> dict[str, dg.TableSchema | int]:
    """Column names and Arrow types of ``schema`` and the row count, under Dagster's reserved keys (shown in
    the UI's *Columns* panel and row-count plot)."""
    columns = [dg.TableColumn(field.name, str(field.type)) for field in schema]
    return {"dagster/column_schema": dg.TableSchema(columns=columns), "dagster/row_count": int(rows)}


def codes_schema(bits: int) -> pa.Schema:
    """The Arrow schema of a ``packed_codes`` part (row_id, code of ``bits`` / 8 bytes, image_hash), as
    ``storage.codes.codes_table`` writes it."""
    from storage.codes import codes_table

    empty = np.zeros(0, np.int64)
    return codes_table(empty, np.zeros((0, bits // 8), np.uint8), bits, "", "", image_hash=empty).schema
