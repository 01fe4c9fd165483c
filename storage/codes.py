"""Packed binary codes in Parquet: ``codes/<catalogue>/<model_id>/part-00000.parquet``."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import StorageRoot

BIT_ORDER = "numpy-packbits-big"


def codes_parts(catalogue: str, model_id: str, part: int = 0) -> tuple[str, ...]:
    return ("codes", catalogue, model_id, f"part-{part:05d}.parquet")


def codes_table(
    row_ids: np.ndarray, codes: np.ndarray, bits: int, catalogue: str, model_id: str, extra: dict[str, str] | None = None
) -> pa.Table:
    """Arrow table (row_id int64, code fixed_size_binary(bits/8)) with the DESIGN.md key-value metadata."""
    nbytes = bits // 8
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != nbytes:
        raise ValueError(f"codes must have shape (n, {nbytes}) for {bits} bits, got {codes.shape}")
    if len(row_ids) != len(codes):
        raise ValueError(f"{len(row_ids)} row ids for {len(codes)} codes")
    code_col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(nbytes), len(codes), [None, pa.py_buffer(codes.tobytes())])
    table = pa.table({"row_id": pa.array(row_ids, pa.int64()), "code": code_col})
    meta = {
        b"model_id": model_id.encode(),
        b"bits": str(bits).encode(),
        b"catalogue": catalogue.encode(),
        b"bit_order": BIT_ORDER.encode(),
        b"created_at": datetime.now(UTC).isoformat().encode(),
        **{k.encode(): v.encode() for k, v in (extra or {}).items()},
    }
    return table.replace_schema_metadata(meta)


def write_codes(
    root: StorageRoot, catalogue: str, model_id: str, row_ids: np.ndarray, codes: np.ndarray, bits: int,
    extra: dict[str, str] | None = None,
) -> str:
    """Atomically write the codes of one (catalogue, model); returns the file URI."""
    table = codes_table(row_ids, codes, bits, catalogue, model_id, extra)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return root.write_bytes(buf.getvalue(), *codes_parts(catalogue, model_id))


def codes_to_numpy(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(row_ids int64, codes uint8 (n, nbytes)) from a codes table."""
    col = table["code"].combine_chunks()
    nbytes = col.type.byte_width
    data = np.frombuffer(col.buffers()[1], dtype=np.uint8, count=len(col) * nbytes, offset=col.offset * nbytes)
    return table["row_id"].to_numpy(), data.reshape(len(col), nbytes)


def read_codes(root: StorageRoot, catalogue: str, model_id: str) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Read codes sorted by row_id, plus their metadata (model_id, bits, catalogue, bit_order, created_at)."""
    path = root.path(*codes_parts(catalogue, model_id))
    if not root.fs.exists(path):
        raise FileNotFoundError(f"no codes for catalogue {catalogue!r}, model {model_id!r} at {root.url(*codes_parts(catalogue, model_id))}")
    with root.fs.open(path, "rb") as f:
        table = pq.read_table(f)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    row_ids, codes = codes_to_numpy(table.sort_by("row_id"))
    return row_ids, codes, meta
