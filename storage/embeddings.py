"""Stored compact embeddings beside the codes (opt-in): each row's pre-sign model output, quantised to int8
(with a per-row float32 scale) or fp16, as extra columns of the codes' own Parquet parts, so they are written,
checked, compacted and replaced with the codes. ``parts.json`` (and the parts' key-value metadata) name the
dtype under ``embedding``. The quantisation itself is ``ml.rerank.quantise``; this module only stores bytes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from storage.codes import CodesMeta, codes_dataset, iter_codes, read_codes_meta
from storage.fs import StorageRoot

__all__ = ["COLUMN", "META_KEY", "SCALE_COLUMN", "embedding_columns", "embedding_dtype", "read_embeddings"]

COLUMN = "embedding"
SCALE_COLUMN = "embedding_scale"
META_KEY = "embedding"  # the dtype ("int8" | "fp16"), in the writer's extra metadata


def embedding_columns(data: np.ndarray, scale: np.ndarray | None) -> dict[str, pa.Array]:
    """Columns for ``PartWriter.write(columns_after=...)``: ``embedding`` fixed_size_binary(width)
    [, ``embedding_scale`` float32]."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    width = data.shape[1]
    cols: dict[str, pa.Array] = {
        COLUMN: pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), len(data), [None, pa.py_buffer(data.tobytes())]
        )
    }
    if scale is not None:
        cols[SCALE_COLUMN] = pa.array(np.asarray(scale, np.float32), pa.float32())
    return cols


def embedding_dtype(meta: CodesMeta) -> str | None:
    """The stored embeddings' dtype, or None when the codes carry none."""
    return meta.extra.get(META_KEY) or None


def read_embeddings(
    root: StorageRoot, catalogue: str, model_id: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """(row_ids, bytes (n, width) uint8, scale or None, dtype), sorted by row_id; FileNotFoundError when the
    codes of (catalogue, model) carry no embeddings."""
    dtype = embedding_dtype(read_codes_meta(root, catalogue, model_id))
    dataset, _ = codes_dataset(root, catalogue, model_id)
    if dtype is None or COLUMN not in dataset.schema.names:
        raise FileNotFoundError(
            f"codes of catalogue {catalogue!r}, model {model_id!r} carry no stored embeddings; "
            f"encode them again with embeddings on (vitrieve encode --embeddings int8)"
        )
    ids, data, scales = [], [], []
    for batch in iter_codes(root, catalogue, model_id, columns=("row_id", COLUMN, SCALE_COLUMN)):
        col = batch.column(COLUMN)
        if col.null_count:
            raise ValueError(f"codes of {catalogue!r}, {model_id!r}: a part lacks embeddings; encode again")
        width = col.type.byte_width
        ids.append(batch.column("row_id").to_numpy())
        raw = np.frombuffer(col.buffers()[1], np.uint8, len(col) * width, col.offset * width)
        data.append(raw.reshape(len(col), width))
        if SCALE_COLUMN in batch.schema.names:
            scales.append(batch.column(SCALE_COLUMN).to_numpy(zero_copy_only=False))
    row_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    order = np.argsort(row_ids, kind="stable")
    width = data[0].shape[1] if data else 0
    out = np.concatenate(data)[order] if data else np.zeros((0, width), np.uint8)
    scale = np.concatenate(scales)[order].astype(np.float32) if scales else None
    return row_ids[order], out, scale, dtype
