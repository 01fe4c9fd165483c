"""Index from the stored codes: rebuilt, or extended with only the new rows of a previous index."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from storage.fs import StorageRoot
from storage.index.base import BinaryIndex
from storage.index.build import build_index, resolve_params
from storage.index.publish import IndexManifest
from storage.index.registry import DEFAULT_KIND


@dataclass
class BuildReport:
    mode: str  # rebuild | incremental | unchanged
    rows: int
    added_rows: int
    read_seconds: float
    build_seconds: float


def index_from_codes(
    root: StorageRoot,
    catalogue: str,
    model_id: str,
    kind: str = DEFAULT_KIND,
    params: dict | None = None,
    keep_rows: np.ndarray | None = None,
    previous: tuple[BinaryIndex, IndexManifest] | None = None,
    item: str | None = None,
) -> tuple[BinaryIndex, np.ndarray, np.ndarray, BuildReport]:
    """Build (or extend) an index from the stored codes of (catalogue, model), streamed from Parquet in batches.

    ``keep_rows`` (sorted row_ids) restricts the index to those rows (the database). With ``previous`` (an
    index of the same model, kind and parameters, loaded with ``mmap=False``), rows it already holds are not
    re-added: when it holds a subset of the rows, only the new rows are added ("incremental"); when it holds
    exactly the rows, it is returned as is ("unchanged"); anything else (rows deleted) rebuilds. Codes are read,
    never re-encoded. Returns (index, row_ids, codes, report) where row_ids/codes are the indexed rows."""
    from storage.codes import read_code_arrays, read_codes_meta

    item = item or f"binary_index of {catalogue!r}"
    t0 = time.perf_counter()
    bits = read_codes_meta(root, catalogue, model_id).bits
    row_ids, codes = read_code_arrays(root, catalogue, model_id, keep=keep_rows)
    read_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if previous is not None:
        prev, manifest = previous
        same = (
            manifest.model_id == model_id
            and manifest.kind == kind
            and manifest.bits == bits
            and manifest.params
            == resolve_params(kind, {**manifest.params, **(params or {})}, len(row_ids), bits, item)
        )
        old = np.sort(prev.ids()) if same else None
        if same and len(old) <= len(row_ids) and bool(np.isin(old, row_ids, assume_unique=True).all()):
            new = ~np.isin(row_ids, old, assume_unique=True)
            if not new.any():
                return prev, row_ids, codes, BuildReport("unchanged", len(row_ids), 0, read_s, 0.0)
        if same and not prev.incremental_add:
            same = False  # this kind re-sorts every row on add: build from the codes instead
        if same and len(old) <= len(row_ids) and bool(np.isin(old, row_ids, assume_unique=True).all()):
            prev.add(row_ids[new], codes[new])
            report = BuildReport(
                "incremental", len(row_ids), int(new.sum()), read_s, time.perf_counter() - t1
            )
            return prev, row_ids, codes, report
    index = build_index(row_ids, codes, bits, kind, params, item)
    return (
        index,
        row_ids,
        codes,
        BuildReport("rebuild", len(row_ids), len(row_ids), read_s, time.perf_counter() - t1),
    )
